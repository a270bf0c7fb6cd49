import dataclasses
import os
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection, transaction
from django.utils import timezone
from PIL import Image as PILImage

from core.embedding import Embedder
from core.imaging import decode_image, display_jpeg_pixels
from core.index import IndexMismatch
from gallery import services as gallery_services
from gallery.models import Image
from gallery.services import image_delete
from search import index_writer, queues, runtime, selectors, services
from search.changelog import record_changes
from search.models import Embedding, IndexChange, local_features_array
from search.services import ImageDescriptors
from tests import images
from tests.conftest import store, store_indexed


class TestImageEmbed:
    def test_it_embeds_a_batch_of_queued_images_and_logs_each(self, db):
        stored = [store(images.jpeg(i), f"{i}.jpg") for i in range(3)]
        outcome = services.image_embed(image_id=stored[0].pk, claim_token="run-1")
        assert sorted(outcome.indexed) == [image.pk for image in stored]
        identity = runtime.index_identity()
        for image in stored:
            image.refresh_from_db()
            assert image.state == Image.State.INDEXED
            assert image.claim_token == "" and image.indexed_at is not None
            embedding = Embedding.objects.get(image=image)
            assert (embedding.backbone, embedding.backbone_version, embedding.dim) == (
                identity.backbone, identity.backbone_version, identity.dim)
            assert np.linalg.norm(embedding.as_array()) == pytest.approx(1.0, abs=1e-5)
            local = local_features_array(embedding.local_features, channels=runtime.embedder().backbone.local_width)
            assert local.shape == (196, 112) and np.isfinite(local).all()
        assert sorted(IndexChange.objects.values_list("image_id", flat=True)) == [i.pk for i in stored]

    def test_running_it_again_changes_nothing(self, db):
        image = store_indexed(images.jpeg(1))
        changes = IndexChange.objects.count()
        outcome = services.image_embed(image_id=image.pk, claim_token="run-2")
        assert outcome.indexed == [] and outcome.failed == {}
        assert IndexChange.objects.count() == changes
        assert Embedding.objects.filter(image=image).count() == 1

    def test_the_batch_is_bounded_by_the_setting(self, db, settings):
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 2
        stored = [store(images.jpeg(i), f"{i}.jpg") for i in range(5)]
        outcome = services.image_embed(image_id=stored[4].pk, claim_token="run-3")
        assert len(outcome.indexed) == 2
        assert stored[4].pk in outcome.indexed
        assert Image.objects.filter(state=Image.State.QUEUED).count() == 3

    def test_a_run_whose_image_another_run_took_fills_its_batch_from_the_queue(self, db, settings):
        # An import asks once per batch, so each run must take a whole batch while any is queued.
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 2
        stored = [store(images.jpeg(i), f"{i}.jpg") for i in range(5)]
        Image.objects.filter(pk=stored[0].pk).update(state=Image.State.EMBEDDING, claim_token="other",
                                                     claimed_at=timezone.now())
        outcome = services.image_embed(image_id=stored[0].pk, claim_token="run-5")
        assert sorted(outcome.indexed) == [stored[1].pk, stored[2].pk]

    def test_an_unreadable_original_fails_that_image_only(self, db, settings):
        settings.LOOKALIKE_EMBED_MAX_ATTEMPTS = 1
        broken, fine = store(images.jpeg(1), "broken.jpg"), store(images.jpeg(2), "fine.jpg")
        os.remove(broken.original.path)
        outcome = services.image_embed(image_id=broken.pk, claim_token="run-4")
        assert outcome.indexed == [fine.pk]
        broken.refresh_from_db()
        assert broken.state == Image.State.FAILED
        assert "could not be read" in broken.error

    def test_it_does_not_take_an_image_another_run_holds(self, db):
        image = store(images.jpeg(1))
        Image.objects.filter(pk=image.pk).update(state=Image.State.EMBEDDING, claim_token="other",
                                                 claimed_at=timezone.now())
        assert services.image_embed(image_id=image.pk, claim_token="mine").indexed == []
        image.refresh_from_db()
        assert (image.state, image.claim_token) == (Image.State.EMBEDDING, "other")

    def test_it_takes_over_a_claim_whose_lease_ran_out(self, db, settings):
        image = store(images.jpeg(1))
        expired = timezone.now() - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS + 1)
        Image.objects.filter(pk=image.pk).update(state=Image.State.EMBEDDING, claim_token="dead",
                                                 claimed_at=expired)
        assert services.image_embed(image_id=image.pk, claim_token="mine").indexed == [image.pk]

    def test_the_same_run_delivered_again_takes_back_its_claim(self, db):
        image = store(images.jpeg(1))
        Image.objects.filter(pk=image.pk).update(state=Image.State.EMBEDDING, claim_token="task-9",
                                                 claimed_at=timezone.now())
        assert services.image_embed(image_id=image.pk, claim_token="task-9").indexed == [image.pk]

    def test_it_describes_a_picture_as_its_display_copy_shows_it(self, db):
        """Queries are nearly always JPEGs made again from a photo: the gallery's side takes the same loss."""
        image = store(images.png(3))
        services.image_embed(image_id=image.pk, claim_token="run-8")
        picture = decode_image(image.original.path, max_pixels=10**8, max_side=400, min_side=224).image
        embedder = runtime.embedder()
        stored = Embedding.objects.get(image=image).as_array()
        [through_jpeg, as_stored] = embedder.embed([display_jpeg_pixels(picture), picture], gallery=True)
        assert stored @ through_jpeg > 0.9999
        assert stored @ as_stored < stored @ through_jpeg

    @pytest.fixture
    def device_decoder(self, settings):
        # What a CUDA worker does by default, run on the CPU.
        settings.LOOKALIKE_JPEG_DECODER = "torchvision"
        runtime.embedder_for.cache_clear()
        yield
        runtime.embedder_for.cache_clear()

    def test_a_worker_decoding_on_its_device_stores_what_pillow_would(self, db, device_decoder):
        stored = [store(images.jpeg(i), f"{i}.jpg") for i in range(3)]
        outcome = services.image_embed(image_id=stored[0].pk, claim_token="run-6")
        assert sorted(outcome.indexed) == [image.pk for image in stored]
        pillow = Embedder(runtime.embedder().backbone, weights_dir=runtime.weights_dir())
        pictures = [decode_image(image.original.path, max_pixels=10**8, max_side=400, min_side=224).image
                    for image in stored]
        with_pillow = pillow.embed(pictures, gallery=True)
        agreement = [Embedding.objects.get(image=image).as_array() @ expected
                     for image, expected in zip(stored, with_pillow, strict=True)]
        assert min(agreement) > 0.95, agreement

    def test_a_damaged_original_under_the_device_decoder_fails_that_image_only(self, db, device_decoder):
        broken, fine = store(images.jpeg(1), "broken.jpg"), store(images.jpeg(2), "fine.jpg")
        with open(broken.original.path, "r+b") as original:
            original.truncate(300)
        outcome = services.image_embed(image_id=broken.pk, claim_token="run-7")
        assert outcome.indexed == [fine.pk]
        broken.refresh_from_db()
        # Pillow, which the batch falls back to, names the damage: refused for good, as at upload.
        assert (broken.state, broken.error_code) == (Image.State.FAILED, "damaged")
        assert broken.error.startswith("The file is damaged")

    def test_the_device_decoder_makes_the_thumbnails_there_and_turns_photos_upright(self, db, device_decoder):
        exif = PILImage.Exif()
        exif[0x0112] = 6
        sideways = images.picture(4, size=(640, 480))
        turned = store(images.encode(sideways, "JPEG", quality=95, exif=exif.tobytes()), "turned.jpg")
        png = store(images.png(5), "other.png")
        services.image_embed(image_id=turned.pk, claim_token="run-8")
        turned.refresh_from_db()
        png.refresh_from_db()
        assert turned.state == png.state == Image.State.INDEXED
        thumbnail = PILImage.open(turned.thumbnail.path)
        assert thumbnail.size == (300, 400)
        expected = sideways.transpose(PILImage.Transpose.ROTATE_270).resize((300, 400), PILImage.Resampling.BILINEAR)
        difference = np.abs(np.asarray(thumbnail.convert("RGB"), dtype=float) - np.asarray(expected, dtype=float))
        assert difference.mean() < 6
        assert PILImage.open(png.thumbnail.path).size == (320, 240)

    def test_missing_weights_fail_the_batch_with_the_command_to_run(self, db, settings, tmp_path):
        settings.LOOKALIKE_BACKBONE = "resnet50"
        settings.TORCH_HOME = tmp_path
        runtime.embedder_for.cache_clear()
        try:
            image = store(images.jpeg(1))
            outcome = services.image_embed(image_id=image.pk, claim_token="run-5")
        finally:
            runtime.embedder_for.cache_clear()
        image.refresh_from_db()
        assert outcome.failed == {image.pk: image.error}
        assert image.state == Image.State.FAILED
        assert "python manage.py install_weights resnet50" in image.error


class TestQueueEmbeddings:
    def test_it_sends_a_store_batch_as_one_message_once_the_transaction_commits(
            self, db, embedding_messages, settings, django_capture_on_commit_callbacks):
        sent = embedding_messages
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 8
        with django_capture_on_commit_callbacks() as callbacks:
            queues.queue_embeddings(list(range(100, 120)))
            assert sent == []
        for callback in callbacks:
            callback()
        assert sent == [("search.send_embedding_batches", ([100, 108, 116],))]

    def test_a_worker_turns_it_into_one_message_per_embedding_batch(self, db, embedding_messages):
        queues.embedding_batches_send(first_ids=[100, 108, 116])
        assert embedding_messages == [("search.embed_image", (first,)) for first in (100, 108, 116)]

    def test_a_batch_of_one_embedding_batch_is_sent_as_it_is(self, db, embedding_messages, settings,
                                                             django_capture_on_commit_callbacks):
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 8
        with django_capture_on_commit_callbacks(execute=True):
            queues.queue_embeddings([100, 101, 102])
            queues.queue_embeddings([])
        assert embedding_messages == [("search.embed_image", (100,))]


class TestEmbeddingsStore:
    def test_storing_again_replaces_the_vectors_and_each_identity_keeps_its_own(self, db):
        first, second = store(images.jpeg(1), "1.jpg"), store(images.jpeg(2), "2.jpg")
        identity = runtime.index_identity()
        other = dataclasses.replace(identity, backbone_version="other", dim=4)
        local = np.full((196, 112), 0.5, dtype=np.float16)

        def vector(value: float, dim: int) -> np.ndarray:
            return np.full(dim, value, dtype=np.float32)

        services.embeddings_store(identity=identity, described={
            first.pk: ImageDescriptors(vector(1, identity.dim), local, [("cat", 0.8)])})
        with transaction.atomic():
            services.embeddings_store(identity=identity, described={
                first.pk: ImageDescriptors(vector(2, identity.dim), local, [("dog", 0.7), ("animal", 0.2)]),
                second.pk: ImageDescriptors(vector(3, identity.dim), local, [])})
            services.embeddings_store(identity=other, described={second.pk: ImageDescriptors(vector(4, 4), local, [])})
        rows = {(row.image_id, row.backbone_version): row for row in Embedding.objects.all()}
        assert set(rows) == {(first.pk, identity.backbone_version), (second.pk, identity.backbone_version),
                             (second.pk, "other")}
        assert np.frombuffer(rows[first.pk, identity.backbone_version].vector, np.float32).tolist() == \
            [2.0] * identity.dim
        assert rows[first.pk, identity.backbone_version].classifier_words == [["dog", 0.7], ["animal", 0.2]]
        assert np.frombuffer(rows[second.pk, "other"].vector, np.float32).tolist() == [4.0] * 4
        assert rows[second.pk, "other"].dim == 4
        assert rows[second.pk, "other"].classifier_words == []
        assert np.array_equal(local_features_array(rows[second.pk, identity.backbone_version].local_features,
                                                    channels=112), local)

    def test_a_row_written_without_classifier_words_has_none(self, db):
        """As a worker of the release before them writes rows, while a rolling upgrade runs."""
        image = store(images.jpeg(1), "1.jpg")
        identity = runtime.index_identity()
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {Embedding._meta.db_table} (image_id, backbone, backbone_version, dim, "
                           "vector, local_features, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                           [image.pk, identity.backbone, identity.backbone_version, identity.dim,
                            np.ones(identity.dim, dtype=np.float32).tobytes(), b"", timezone.now()])
        assert Embedding.objects.get(image=image).classifier_words == []

    def test_an_embedded_image_keeps_the_classifier_words_of_its_whole_picture(self, db, clean_index):
        cat = store_indexed(images.bench_image("cat", 11).read_bytes(), "cat.jpg")
        words = Embedding.objects.get(image=cat).classifier_words
        assert [word for word, _ in words][:1] == ["cat"]
        assert all(0.0 <= score <= 1.0 for _, score in words)


class TestMalformedVectors:
    def test_storing_refuses_a_vector_whose_length_is_not_the_identitys_dimension(self, db):
        image = store(images.jpeg(1))
        identity = runtime.index_identity()
        too_long = np.ones(identity.dim + 1, dtype=np.float32)
        local = np.zeros((196, 112), dtype=np.float16)
        with pytest.raises(IndexMismatch, match=f"image #{image.pk} has {identity.dim + 1} values"):
            services.embeddings_store(identity=identity, described={image.pk: ImageDescriptors(too_long, local, [])})
        assert not Embedding.objects.exists()

    def test_a_malformed_row_is_logged_and_skipped_by_the_writer_and_by_search(self, db, clean_index, settings,
                                                                               caplog):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
        good = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(3)]
        index_writer.index_sync()
        bad = store(images.jpeg(9), "bad.jpg")
        identity = runtime.index_identity()
        # As the race of a batch with a reindex once left it: another model's vector under this label.
        with transaction.atomic():
            Embedding.objects.create(image=bad, backbone=identity.backbone, backbone_version=identity.backbone_version,
                                     dim=identity.dim, vector=np.ones(2048, dtype=np.float32).tobytes())
            Image.objects.filter(pk=bad.pk).update(state=Image.State.INDEXED)
            record_changes(image_ids=[bad.pk], kind=IndexChange.Kind.UPSERT)
        query = Embedding.objects.get(image=good[0]).as_array()[None, :]

        [hits] = selectors.similar_to_vectors(query, k=10)
        assert {hit.image.pk for hit in hits} == {image.pk for image in good}
        result = index_writer.index_sync()
        assert result.status == "published"
        assert runtime.snapshot_store().load(result.meta, runtime.index_params()).ids() == {i.pk for i in good}
        assert f"Skipping the vector of image #{bad.pk}" in caplog.text


@pytest.mark.skipif(not os.environ.get("DATABASE_URL"), reason="PostgreSQL checks foreign keys at commit; "
                    "SQLite runs one writing transaction at a time, so the delete cannot come in between")
def test_a_delete_that_commits_while_a_batch_finishes_costs_only_the_deleted_image(transactional_db, monkeypatch):
    # No embedding task: a worker left running by an earlier test would embed the images first.
    with monkeypatch.context() as unsent:
        unsent.setattr(gallery_services, "queue_embeddings", lambda image_ids: None)
        doomed, kept = store(images.jpeg(1), "doomed.jpg"), store(images.jpeg(2), "kept.jpg")
    original_embed = services.images_embed_with
    deleting = threading.Event()

    def delete_slowly() -> None:
        # The delete holds the image's row until it commits, a second after the batch started to finish.
        try:
            with transaction.atomic():
                image_delete(image=Image.objects.get(pk=doomed.pk))
                deleting.set()
                time.sleep(1.0)
        finally:
            connection.close()

    def start_the_delete_after_the_embed(*, embedder, images):
        described = original_embed(embedder=embedder, images=images)
        threading.Thread(target=delete_slowly).start()
        assert deleting.wait(30)
        return described

    monkeypatch.setattr(services, "images_embed_with", start_the_delete_after_the_embed)
    outcome = services.image_embed(image_id=doomed.pk, claim_token="racing-a-delete")
    assert outcome.indexed == [kept.pk]
    assert not Image.objects.filter(pk=doomed.pk).exists()
    assert Image.objects.get(pk=kept.pk).state == Image.State.INDEXED
    assert list(Embedding.objects.values_list("image_id", flat=True)) == [kept.pk]
    assert doomed.pk not in IndexChange.objects.filter(kind=IndexChange.Kind.UPSERT).values_list("image_id", flat=True)
