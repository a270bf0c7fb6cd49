import io
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from gallery import copies
from gallery.models import Image
from jobs.models import Job
from search import changelog, index_writer, queues, runtime, selectors, services
from search.models import Embedding
from tests import images
from tests.conftest import store, store_indexed


@pytest.fixture
def gallery(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(5)]
    index_writer.index_sync()
    return stored


def published_ids() -> set[int]:
    store = runtime.snapshot_store()
    meta = store.read_meta()
    assert meta is not None, "an index is published"
    return store.load(meta, runtime.index_params()).ids()


class TestReconcile:
    def test_upkeep_repairs_an_index_that_was_damaged(self, gallery):
        store = runtime.snapshot_store()
        damaged = store.load(store.read_meta(), runtime.index_params())
        damaged.remove([gallery[0].pk, gallery[3].pk])
        stray = np.ones((1, runtime.index_identity().dim), dtype=np.float32)
        damaged.upsert(np.array([10**9]), stray / np.linalg.norm(stray))
        store.publish(damaged, applied_seq=changelog.last_seq())
        assert published_ids() != {image.pk for image in gallery}

        out = io.StringIO()
        call_command("upkeep", stdout=out)
        assert "index: 2 missing vectors added, 1 stale removed" in out.getvalue()
        assert published_ids() == {image.pk for image in gallery}
        job = Job.objects.get(kind=Job.Kind.UPKEEP)
        assert (job.state, job.summary) == (Job.State.SUCCEEDED, out.getvalue().strip())

    def test_an_intact_index_is_left_as_it_is(self, gallery):
        snapshot = runtime.snapshot_store().read_meta().snapshot_id
        repair = index_writer.index_repair()
        assert (repair.reconciled.added, repair.reconciled.removed, repair.rebuilt) == (0, 0, "")
        assert runtime.snapshot_store().read_meta().snapshot_id == snapshot

    def test_a_corrupt_snapshot_is_rebuilt(self, gallery):
        store = runtime.snapshot_store()
        meta = store.read_meta()
        (store.root / meta.snapshot_id / "index.hnsw").write_bytes(b"damaged")
        repair = index_writer.index_repair()
        assert "does not match its checksum" in repair.rebuilt
        assert published_ids() == {image.pk for image in gallery}


def backdate(image: Image, **fields) -> None:
    Image.objects.filter(pk=image.pk).update(**fields)


@pytest.fixture
def embed_queue(settings) -> Iterator[str]:
    """An embedding queue of this test's own on the configured broker, emptied afterwards."""
    from search.tasks import embed_image

    settings.LOOKALIKE_EMBED_QUEUE = f"{settings.LOOKALIKE_EMBED_QUEUE}-{uuid.uuid4().hex[:8]}"
    yield settings.LOOKALIKE_EMBED_QUEUE
    with embed_image.app.connection_for_write() as broker:
        broker.default_channel.queue_purge(settings.LOOKALIKE_EMBED_QUEUE)


class TestStuckImages:
    def test_images_queued_too_long_are_sent_again_once_per_interval(self, db, settings, embed_queue,
                                                                     django_capture_on_commit_callbacks):
        old, fresh = store(images.jpeg(1), "old.jpg"), store(images.jpeg(2), "fresh.jpg")
        backdate(old, created_at=timezone.now() - timedelta(hours=2))
        with django_capture_on_commit_callbacks() as sent:
            assert services.images_requeue_stuck(older_than=timedelta(hours=1)) == 1
        assert len(sent) == 1
        assert services.images_requeue_stuck(older_than=timedelta(hours=1)) == 0
        old.refresh_from_db()
        fresh.refresh_from_db()
        assert old.retry_after is not None and old.state == Image.State.QUEUED
        assert fresh.retry_after is None

    def test_images_are_not_sent_again_while_a_message_waits_for_a_worker(self, db, embed_queue,
                                                                          django_capture_on_commit_callbacks):
        from search.tasks import embed_image

        waiting = store(images.jpeg(1), "waiting.jpg")
        backdate(waiting, created_at=timezone.now() - timedelta(hours=2))
        embed_image.apply_async((waiting.pk,), queue=embed_queue)
        assert queues.embed_messages_waiting() == 1
        with django_capture_on_commit_callbacks() as sent:
            assert services.images_requeue_stuck(older_than=timedelta(hours=1)) == 0
        assert sent == []
        waiting.refresh_from_db()
        assert waiting.retry_after is None

    def test_stuck_images_never_tried_go_out_one_message_per_batch(self, db, settings, embed_queue,
                                                                   embedding_messages,
                                                                   django_capture_on_commit_callbacks):
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 2
        lost = [store(images.jpeg(i), f"lost-{i}.jpg") for i in range(5)]
        retried = store(images.jpeg(9), "retried.jpg")
        for image in lost:
            backdate(image, created_at=timezone.now() - timedelta(hours=2))
        backdate(retried, attempts=1, retry_after=timezone.now() - timedelta(hours=2))
        with django_capture_on_commit_callbacks(execute=True):
            assert services.images_requeue_stuck(older_than=timedelta(hours=1)) == 6
        assert sorted(embedding_messages) == [
            ("search.embed_image", (retried.pk,)),
            ("search.send_embedding_batches", ([lost[0].pk, lost[2].pk, lost[4].pk],)),
        ]

    def test_an_image_whose_worker_died_is_taken_over_and_given_up_after_the_attempts(self, db, settings):
        settings.LOOKALIKE_EMBED_MAX_ATTEMPTS = 2
        image = store(images.jpeg(1))
        lease_over = timezone.now() - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS + 1)
        backdate(image, state=Image.State.EMBEDDING, claim_token="dead", claimed_at=lease_over, attempts=2)
        assert services.images_requeue_stuck(older_than=timedelta(hours=1)) == 1
        outcome = services.image_embed(image_id=image.pk, claim_token="upkeep-sent")
        image.refresh_from_db()
        assert outcome.indexed == []
        assert image.state == Image.State.FAILED
        assert image.error == "Gave up after 2 attempts: the worker stopped while embedding it"


class TestRetries:
    def test_a_failed_embedding_is_retried_with_back_off_then_marked_failed(self, db, settings,
                                                                           django_capture_on_commit_callbacks):
        settings.LOOKALIKE_EMBED_RETRY_SECONDS = 10
        image = store(images.jpeg(1), "broken.jpg")
        os.remove(image.original.path)
        delays = []
        for attempt in (1, 2, 3):
            started = timezone.now()
            with django_capture_on_commit_callbacks() as sent:
                services.image_embed(image_id=image.pk, claim_token=f"try-{attempt}")
            image.refresh_from_db()
            assert image.attempts == attempt
            assert "could not be read" in image.error
            if attempt < 3:
                assert image.state == Image.State.QUEUED
                assert len(sent) == 1
                delays.append(round((image.retry_after - started).total_seconds()))
            else:
                assert image.state == Image.State.FAILED
                assert sent == []
        assert delays == [10, 40]

    def test_a_failed_image_waits_for_its_own_retry_and_does_not_join_other_batches(self, db):
        failed_once = store(images.jpeg(1), "retrying.jpg")
        backdate(failed_once, attempts=1, retry_after=timezone.now() + timedelta(minutes=5), error="boom")
        fresh = store(images.jpeg(2), "fresh.jpg")
        assert services.image_embed(image_id=fresh.pk, claim_token="batch").indexed == [fresh.pk]
        failed_once.refresh_from_db()
        assert failed_once.state == Image.State.QUEUED

    def test_a_batch_whose_run_died_is_split_so_that_one_file_cannot_fail_the_others(
            self, db, django_capture_on_commit_callbacks):
        batch = [store(images.jpeg(i), f"{i}.jpg") for i in range(3)]
        for image in batch:
            backdate(image, state=Image.State.EMBEDDING, claim_token="task-7", claimed_at=timezone.now(), attempts=1)
        with django_capture_on_commit_callbacks() as sent:
            outcome = services.image_embed(image_id=batch[0].pk, claim_token="task-7")
        assert outcome.indexed == [batch[0].pk]
        assert list(Image.objects.filter(pk__in=[batch[1].pk, batch[2].pk]).values_list("state", flat=True)) == [
            Image.State.QUEUED, Image.State.QUEUED]
        # one embedding task for each of the two, the index writer, tag suggestions and the display copy
        assert len(sent) == 5

    def test_retrying_failed_images_starts_their_attempts_afresh(self, db, django_capture_on_commit_callbacks):
        failed, indexed = store(images.jpeg(1)), store_indexed(images.jpeg(2), "ok.jpg")
        backdate(failed, state=Image.State.FAILED, attempts=3, error="bad")
        with django_capture_on_commit_callbacks() as sent:
            assert services.images_retry_failed(image_ids=[failed.pk, indexed.pk]) == 1
        assert len(sent) == 1
        failed.refresh_from_db()
        assert (failed.state, failed.attempts, failed.error) == (Image.State.QUEUED, 0, "")
        services.image_embed(image_id=failed.pk, claim_token="again")
        failed.refresh_from_db()
        assert failed.state == Image.State.INDEXED
        assert Embedding.objects.filter(image=failed).exists()


def test_vectors_that_no_index_uses_do_not_stop_search_and_upkeep_removes_them(gallery):
    Embedding.objects.create(image=gallery[0], backbone="resnet50", backbone_version="left-behind", dim=4,
                             vector=np.zeros(4, dtype=np.float32).tobytes())
    assert len(selectors.similar_to_image(gallery[1], k=3)) == 3
    out = io.StringIO()
    call_command("upkeep", stdout=out)
    assert "1 vectors of no index in use removed" in out.getvalue()
    assert not Embedding.objects.other_than(runtime.index_identity()).exists()
    assert len(selectors.similar_to_image(gallery[1], k=3)) == 3


def test_upkeep_queues_an_indexed_image_that_has_no_vector_of_the_model_in_use(gallery):
    Embedding.objects.filter(image=gallery[2]).delete()
    out = io.StringIO()
    call_command("upkeep", stdout=out)
    assert "1 indexed images without a vector of the model in use queued again" in out.getvalue()
    gallery[2].refresh_from_db()
    assert gallery[2].state == Image.State.QUEUED
    services.image_embed(image_id=gallery[2].pk, claim_token="after-upkeep")
    gallery[2].refresh_from_db()
    assert gallery[2].state == Image.State.INDEXED
    assert selectors.similar_to_image(gallery[2], k=1)[0].image != gallery[2]
    assert Embedding.objects.of(runtime.index_identity()).filter(image=gallery[2]).count() == 1


def test_upkeep_queues_the_display_copies_that_indexed_images_lack(gallery, django_capture_on_commit_callbacks):
    from gallery.tasks import make_display_copies

    Image.objects.filter(pk__in=[gallery[1].pk, gallery[3].pk]).update(display="")
    out = io.StringIO()
    with django_capture_on_commit_callbacks() as sent:
        call_command("upkeep", stdout=out)
    assert "the display copies of 2 indexed images queued" in out.getvalue()
    assert make_display_copies.delay in sent
    assert copies.display_copies_catch_up(pause=lambda: False) == 2
    assert not Image.objects.filter(display="").exists()


def test_only_a_worker_that_also_embeds_waits_for_the_embeddings_that_wait(db, embed_queue, monkeypatch):
    from search.tasks import embed_image
    from search.worker import EMBEDDING_WORKER_ENV, embeddings_wait_for_this_worker

    embed_image.apply_async((10**9,), queue=embed_queue)
    assert not embeddings_wait_for_this_worker()
    monkeypatch.setenv(EMBEDDING_WORKER_ENV, "1")
    assert embeddings_wait_for_this_worker()
    with embed_image.app.connection_for_write() as broker:
        broker.default_channel.queue_purge(embed_queue)
    assert not embeddings_wait_for_this_worker()
