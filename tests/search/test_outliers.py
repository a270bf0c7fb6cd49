"""Unusual uploads: the outlier score of each image (its distance to its K-th nearest image, as a
percentile of the gallery's), made when an image is embedded and for the whole gallery by a job, and
the moderation hold of uploads that score at or above LOOKALIKE_MODERATION_OUTLIER_SCORE."""
import random

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.db import transaction
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from core import knn_outliers
from gallery.models import Image, OutlierScore
from jobs import services as job_services
from jobs.models import Job
from search import changelog, outliers, runtime
from search.models import IndexChange
from search.services import ImageDescriptors, embeddings_store
from tests import images
from tests.conftest import store_indexed
from tests.search.test_words import row

PHOTOS = [("cat", n) for n in range(1, 13)] + [("dog", n) for n in range(1, 19)]


def bench(category: str, number: int, owner=None) -> Image:
    return store_indexed(images.bench_image(category, number).read_bytes(), f"{category}-{number}.jpg", owner)


def noise(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    return images.encode(PILImage.fromarray(pixels), "PNG")


def text_screenshot(seed: int) -> bytes:
    rng = random.Random(seed)
    picture = PILImage.new("RGB", (640, 400), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, 640, 28), fill=(60, 60, 70))
    font = ImageFont.load_default(size=18)
    words = "invoice total due account settings save cancel error warning search results page next".split()
    for y in range(44, 380, 30):
        draw.text((16, y), " ".join(rng.choice(words) for _ in range(8)), fill=(20, 20, 20), font=font)
    return images.encode(picture, "PNG")


def run_job() -> Job:
    job = outliers.outlier_scores_start()
    job_services.job_execute(job_id=job.pk, token=job.claim_token)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.last_error
    return job


def score_of(image: Image) -> float | None:
    return OutlierScore.objects.filter(image=image).values_list("score", flat=True).first()


@pytest.fixture(scope="session")
def photo_descriptors() -> list[ImageDescriptors]:
    """The gallery vectors of the bench photos, computed once by the site's embedder."""
    embedder = runtime.embedder_for(django_settings.LOOKALIKE_BACKBONE)
    described = embedder.describe([PILImage.open(images.bench_image(*photo)).convert("RGB") for photo in PHOTOS],
                                  gallery=True)
    return [ImageDescriptors(vector, local, [])
            for vector, local in zip(described.vectors, described.local, strict=True)]


def indexed_photos(descriptors: list[ImageDescriptors], start: int, stop: int) -> list[Image]:
    """Indexed photos, stored as the embedding worker stores them, without embedding each again."""
    photos = [row(f"{category}-{n}.jpg") for category, n in PHOTOS[start:stop]]
    with transaction.atomic():
        embeddings_store(identity=runtime.index_identity(),
                         described={photo.pk: descriptors[start + i] for i, photo in enumerate(photos)})
        changelog.record_changes(image_ids=[photo.pk for photo in photos], kind=IndexChange.Kind.UPSERT)
    return photos


@pytest.fixture
def photos(db, clean_index, photo_descriptors) -> list[Image]:
    return indexed_photos(photo_descriptors, 0, 25)


@pytest.fixture
def scored(photos) -> list[Image]:
    run_job()
    return photos


def test_the_job_scores_every_indexed_image_as_a_percentile_of_the_gallery(photos):
    job = run_job()

    rows = {row.image_id: row for row in OutlierScore.objects.all()}
    assert set(rows) == {photo.pk for photo in photos}
    assert (job.done, job.total, job.phase) == (25, 25, "ranking")
    for scored_row in rows.values():
        below = sum(other.distance < scored_row.distance for other in rows.values())
        assert scored_row.score == pytest.approx(100 * below / 24)
        assert 0.0 < scored_row.distance < 2.0
    assert max(r.score for r in rows.values()) == 100.0 and min(r.score for r in rows.values()) == 0.0
    assert "Scored 25 images" in job.summary


def test_a_planted_odd_image_scores_higher_than_every_photo(photos):
    odd = [store_indexed(noise(1), "noise.png"), store_indexed(text_screenshot(2), "screenshot.png")]

    run_job()

    highest_photo = max(score_of(photo) for photo in photos)
    assert all(score_of(image) > highest_photo for image in odd)


def test_a_new_image_is_scored_when_embedded_among_the_gallery(scored):
    reference = {row.image_id: (row.distance, row.score) for row in OutlierScore.objects.all()}

    cat, odd = bench("cat", 20), store_indexed(noise(3), "noise.png")

    cat_score, odd_score = OutlierScore.objects.get(image=cat), OutlierScore.objects.get(image=odd)
    # Ranked among the distances the job measured, which stay as they were until it runs again.
    below = sum(distance < cat_score.distance for distance, _ in reference.values())
    assert cat_score.score == pytest.approx(100 * below / 25)
    assert odd_score.score == 100.0 > cat_score.score
    assert {row.image_id: (row.distance, row.score)
            for row in OutlierScore.objects.filter(image_id__in=reference)} == reference


def test_before_the_first_job_new_images_are_not_scored(photos):
    assert not OutlierScore.objects.exists()


def test_the_job_measures_every_image_again_after_the_gallery_changed(scored, photo_descriptors):
    before = dict(OutlierScore.objects.values_list("image_id", "distance"))
    # Five more dogs: the dogs' neighbourhoods are denser now.
    gallery = scored + indexed_photos(photo_descriptors, 25, 30)

    run_job()

    after = dict(OutlierScore.objects.values_list("image_id", "distance"))
    assert set(after) == {image.pk for image in gallery}
    assert all(after[dog.pk] < before[dog.pk] for dog in scored[12:25])
    assert OutlierScore.objects.filter(score__isnull=True).count() == 0


def test_a_resumed_job_measures_only_the_images_after_its_checkpoint(scored):
    OutlierScore.objects.update(distance=5.0)
    first = scored[0]
    job = outliers.outlier_scores_start()
    Job.objects.filter(pk=job.pk).update(checkpoint={"after": first.pk})

    job_services.job_execute(job_id=job.pk, token=job.claim_token)

    distances = dict(OutlierScore.objects.values_list("image_id", "distance"))
    assert distances.pop(first.pk) == 5.0
    assert all(d < 2.0 for d in distances.values())
    assert score_of(first) == 100.0


def test_the_job_forgets_images_that_left_the_index(scored):
    gone = scored[0]
    Image.objects.filter(pk=gone.pk).update(state=Image.State.FAILED)

    run_job()

    assert not OutlierScore.objects.filter(image=gone).exists()
    assert OutlierScore.objects.count() == 24


class TestModerationHold:
    def test_an_upload_scored_at_or_above_the_setting_is_held_hidden(self, scored, settings, user, client):
        settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = 99.0

        odd = store_indexed(noise(4), "noise.png", owner=user)

        odd.refresh_from_db()
        assert score_of(odd) >= 99.0
        assert (odd.state, odd.hidden, odd.awaiting_approval) == (Image.State.INDEXED, True, True)
        assert client.get(f"/images/{odd.pk}/").status_code == 404

    def test_an_upload_below_the_setting_is_not_held(self, scored, settings):
        settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = 99.0

        cat = bench("cat", 20)

        cat.refresh_from_db()
        assert score_of(cat) < 99.0
        assert (cat.hidden, cat.awaiting_approval) == (False, False)

    def test_unset_it_holds_nothing(self, scored, settings):
        settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = None

        odd = store_indexed(noise(4), "noise.png")

        odd.refresh_from_db()
        assert score_of(odd) == 100.0
        assert (odd.hidden, odd.awaiting_approval) == (False, False)

    def test_an_approved_image_embedded_again_is_not_held_again(self, scored, settings):
        from gallery.services import images_approve, images_reembed
        from search.services import image_embed

        settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = 99.0
        odd = store_indexed(noise(4), "noise.png")
        assert images_approve(image_ids=[odd.pk]) == 1
        assert images_reembed(image_ids=[odd.pk]) == 1

        image_embed(image_id=odd.pk, claim_token="again")

        odd.refresh_from_db()
        assert (odd.state, odd.hidden, odd.awaiting_approval) == (Image.State.INDEXED, False, False)

    def test_a_failed_scoring_never_costs_the_upload_nor_holds_it(self, scored, settings, monkeypatch):
        settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = 0.0

        def broken(*args, **kwargs):
            raise OSError("the snapshot could not be read")

        monkeypatch.setattr(outliers, "kth_distances", broken)

        odd = store_indexed(noise(4), "noise.png")

        odd.refresh_from_db()
        assert (odd.state, odd.hidden) == (Image.State.INDEXED, False)
        assert not OutlierScore.objects.filter(image=odd).exists()


class TestPercentiles:
    def test_each_score_is_the_share_of_the_others_below(self):
        scores = knn_outliers.percentile_scores(np.array([0.3, 0.1, 0.2, 0.2, 0.9]))
        assert scores.tolist() == [75.0, 0.0, 25.0, 25.0, 100.0]

    def test_a_score_needs_another_image(self):
        with pytest.raises(ValueError, match="at least one other image"):
            knn_outliers.share_below(0, 0)
