"""The near-duplicate scan on pictures made for the test, and its review page in the admin."""
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import PngImagePlugin

from gallery.models import DuplicateGroup, Image
from jobs import services as job_services
from jobs.models import Job
from search import duplicates, index_writer, selectors
from search.models import Embedding
from tests import images
from tests.conftest import store_indexed

PAGE = reverse("admin:gallery_image_duplicates")


def png_with_note(seed: int, note: str) -> bytes:
    """The same pixels in another file: a PNG whose text chunk differs."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", note)
    return images.encode(images.picture(seed), "PNG", pnginfo=info)


@pytest.fixture
def alike(db, clean_index):
    """Two exact copies, a photo with a half-size copy, and two unrelated pictures."""
    made = {
        "copy_a": store_indexed(png_with_note(1, "first"), "copy-a.png"),
        "copy_b": store_indexed(png_with_note(1, "second"), "copy-b.png"),
        "small": store_indexed(images.jpeg(2, (320, 240)), "small.jpg"),
        "large": store_indexed(images.jpeg(2, (640, 480)), "large.jpg"),
        "other_1": store_indexed(images.jpeg(3), "other-1.jpg"),
        "other_2": store_indexed(images.jpeg(4), "other-2.jpg"),
    }
    # These pictures of random shapes are alike enough for the copies noticed at upload, whose
    # groups join the review (search/test_copy_notices.py); these tests are about the scan's.
    DuplicateGroup.objects.filter(scan=None).delete()
    index_writer.index_sync()
    return made


def scan(threshold: float = 0.95) -> Job:
    job = duplicates.duplicate_scan_start(threshold=threshold)
    job_services.job_execute(job_id=job.pk, token=job.claim_token)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.last_error
    return job


def test_the_scan_groups_exact_copies_first_then_resized_copies_with_the_best_copy_proposed(alike):
    job = scan()
    groups = list(DuplicateGroup.objects.filter(scan=job))
    assert [(g.exact, g.image_ids) for g in groups] == [
        (True, [alike["copy_a"].pk, alike["copy_b"].pk]),  # same size: the earlier upload is proposed
        (False, [alike["large"].pk, alike["small"].pk]),  # the larger resolution is proposed
    ]
    assert groups[1].lowest_similarity >= 0.95
    assert job.summary == "2 groups of alike images among 6 (1 of exact copies) at similarity 0.95 or more."
    assert (job.done, job.total) == (6, 6)


def test_a_threshold_out_of_range_is_refused(db):
    with pytest.raises(duplicates.ScanRefused, match=r"between 0\.5 and 1"):
        duplicates.duplicate_scan_start(threshold=1.5)


def test_a_scan_without_an_index_fails_and_says_why(db, clean_index):
    job = duplicates.duplicate_scan_start(threshold=0.9)
    job_services.job_execute(job_id=job.pk, token=job.claim_token)
    job.refresh_from_db()
    assert job.state == Job.State.FAILED and "no published index to scan yet" in job.last_error


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))
    return client


def test_the_review_page_shows_groups_side_by_side_with_resolution_and_size(admin_client, alike):
    scan()
    page = admin_client.get(PAGE).content.decode()
    assert page.index("<h3>Exact copies") < page.index("<h3>Near-duplicates")
    for image in alike.values():
        if image.original_name.startswith("other"):
            assert image.original_name not in page
        else:
            assert image.thumbnail.url in page and f"{image.width} × {image.height}" in page


def test_keeping_one_and_hiding_the_others_takes_them_out_of_search(admin_client, alike):
    scan()
    group = DuplicateGroup.objects.get(exact=False)
    reply = admin_client.post(PAGE, {"group": group.pk, "keep": alike["small"].pk, "action": "hide"}, follow=True)
    assert f"Kept image #{alike['small'].pk}; hid 1 others." in reply.content.decode()
    assert Image.objects.get(pk=alike["large"].pk).hidden
    vector = Embedding.objects.get(image=alike["small"]).as_array()
    assert alike["large"].pk not in [s.image.pk for s in selectors.similar_to_vectors(vector[None, :], k=10)[0]]
    assert DuplicateGroup.objects.get(pk=group.pk).resolved_at is not None


def test_all_proposals_at_once_deletes_the_others(admin_client, alike):
    scan()
    admin_client.post(PAGE, {"all": "1", "action": "delete"})
    assert set(Image.objects.values_list("original_name", flat=True)) == {
        "copy-a.png", "large.jpg", "other-1.jpg", "other-2.jpg"}
    assert "0 groups left to review" in admin_client.get(PAGE).content.decode()


def test_a_scan_is_started_from_the_page_and_bad_input_changes_nothing(admin_client, alike):
    admin_client.post(PAGE, {"scan": "1", "threshold": "0.9"})
    assert Job.objects.get(kind=Job.Kind.DUPLICATE_SCAN).params == {"threshold": 0.9}
    reply = admin_client.post(PAGE, {"scan": "1", "threshold": "lots"}, follow=True)
    assert "Nothing was changed" in reply.content.decode()
    reply = admin_client.post(PAGE, {"group": "999", "keep": "1", "action": "hide"}, follow=True)
    assert "Nothing was changed" in reply.content.decode()
    assert not Image.objects.filter(hidden=True).exists()


def test_scan_duplicates_starts_a_scan_and_refuses_a_bad_threshold(db):
    out = io.StringIO()
    call_command("scan_duplicates", "--threshold", "0.9", stdout=out)
    job = Job.objects.get(kind=Job.Kind.DUPLICATE_SCAN)
    assert out.getvalue().strip() == f"Started {job}." and job.params == {"threshold": 0.9}
    with pytest.raises(CommandError, match=r"between 0\.5 and 1"):
        call_command("scan_duplicates", "--threshold", "2")
