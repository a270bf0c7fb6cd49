"""Faults done for real: processes killed with SIGKILL, snapshots damaged on disk, workers and
searches running at once in separate processes."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from core.index import HnswParams, SnapshotStore
from gallery import services as gallery_services
from gallery.models import Image
from search import runtime
from search.changelog import last_seq
from search.models import Embedding
from search.tasks import embed_image
from tests import images
from tests.conftest import PROJECT_ROOT, Worker, manage, process_env, store, upload_file, wait_for

PUBLISHER = """
import sys
from pathlib import Path

import numpy as np

from core.identity import IndexIdentity
from core.index import HnswIndex, HnswParams, SnapshotStore

vectors = np.random.default_rng(int(sys.argv[2])).normal(size=(4000, 64)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
index = HnswIndex(IndexIdentity("test-backbone", "v1", 64), HnswParams(m=8, ef_construction=32))
index.upsert(np.arange(1, len(vectors) + 1), vectors)
store = SnapshotStore(Path(sys.argv[1]))
seq = 0
while True:
    seq += 1
    print(store.publish(index, applied_seq=seq).snapshot_id, flush=True)
"""


def test_a_writer_killed_while_publishing_leaves_a_snapshot_that_loads(tmp_path):
    store = SnapshotStore(tmp_path)
    interrupted = 0
    for attempt in range(8):
        writer = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(tmp_path), str(attempt)], cwd=PROJECT_ROOT,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline(), "the writer published once"
            time.sleep(random.uniform(0.0, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
        interrupted += any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        meta = store.read_meta()
        assert store.load(meta, HnswParams()).count == 4000
    assert interrupted, "at least one kill landed in the middle of a publish"


BATCH = 96


def one_batch(worker, size: int) -> Iterator[list[int]]:
    """Images queued while no worker runs, then a worker that embeds them all in one batch: one run
    that takes seconds, to be killed in the middle of."""
    worker.stop()
    stored = [store(images.jpeg(200 + i, size=(640, 480)), f"batch-{i}.jpg") for i in range(size)]
    worker.start(LOOKALIKE_EMBED_BATCH_SIZE=str(size))
    yield [image.pk for image in stored]
    worker.stop()
    worker.start()


@pytest.fixture
def big_batch(worker):
    yield from one_batch(worker, BATCH)


@pytest.fixture
def lone_batch(worker, monkeypatch):
    """A batch sent as one task, so that the worker's other pool process has nothing to run and
    waits for a task all along."""
    monkeypatch.setattr(gallery_services, "queue_embeddings", lambda ids: None)
    batch = one_batch(worker, 2 * BATCH)
    ids = next(batch)
    # Only once both have loaded the model does CPU use tell the embedding process from the waiting one.
    wait_for(lambda: len(use := worker.pool_cpu_use()) == 2 and not any(use.values()), 120,
             message="both pool processes to load the model and wait")
    embed_image.delay(ids[0])
    yield ids
    next(batch, None)


def wait_until_claimed(ids: list[int]) -> None:
    wait_for(lambda: Image.objects.filter(pk__in=ids, state=Image.State.EMBEDDING).count() == len(ids), 120,
             interval=0.01, message="the worker to claim the batch")


def assert_one_vector_and_one_index_entry_each(ids: list[int]) -> None:
    wait_for(lambda: Image.objects.filter(pk__in=ids, state=Image.State.INDEXED).count() == len(ids), 180,
             message="the batch to be indexed")
    assert sorted(Embedding.objects.values_list("image_id", flat=True)) == sorted(ids)
    store_ = runtime.snapshot_store()
    meta = wait_for(lambda: (m := store_.read_meta()) and m.applied_seq == last_seq() and m, 60, message="a snapshot")
    assert meta.count == len(ids)
    assert store_.load(meta, runtime.index_params()).ids() == set(ids)


@pytest.mark.worker
class TestKilledWorkers:
    def test_a_pool_process_killed_while_embedding_gets_its_task_again(self, worker, big_batch):
        wait_until_claimed(big_batch)
        # The other pool process only runs the batch's other tasks, which find their image taken.
        os.kill(worker.busiest_pool_process(), signal.SIGKILL)
        assert Image.objects.filter(pk__in=big_batch, state=Image.State.INDEXED).count() < len(big_batch)
        assert_one_vector_and_one_index_entry_each(big_batch)
        log = worker.log()
        assert "WorkerLostError" in log and "SIGKILL" in log, log[-3000:]
        assert worker.process.poll() is None

    def test_both_pool_processes_killed_at_once_the_batch_runs_again_before_its_lease_ends(self, worker, lone_batch):
        """One pool process embeds the batch while the other waits for a task (on the embedded broker,
        at the pipe that the pool's processes share): both are killed at once."""
        wait_until_claimed(lone_batch)
        pool = wait_for(lambda: (use := worker.pool_cpu_use()) and sorted(t > 0 for t in use.values()) == [False, True]
                        and list(use), 60, message="one pool process to embed while the other waits")
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert Image.objects.filter(pk__in=lone_batch, state=Image.State.INDEXED).count() < len(lone_batch)
        assert_one_vector_and_one_index_entry_each(lone_batch)
        print(f"the batch was embedded {time.monotonic() - killed:.1f} s after the kill")
        log = worker.log()
        assert "WorkerLostError" in log, log[-3000:]
        assert worker.process.poll() is None

    def test_after_the_whole_worker_is_killed_a_later_run_takes_the_claim_over(self, worker, big_batch):
        """The message may die with the worker (the embedded broker deletes it on delivery; Redis gives
        it back only after its visibility timeout), so the claim's lease is what frees the images:
        once it has run out, the next run for one of them takes the whole batch over."""
        wait_until_claimed(big_batch)
        worker.stop(signal.SIGKILL)
        assert Image.objects.filter(pk__in=big_batch, state=Image.State.EMBEDDING).exists()
        # As if the lease had run out while no worker was alive.
        expired = timezone.now() - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS + 1)
        Image.objects.filter(pk__in=big_batch, state=Image.State.EMBEDDING).update(claimed_at=expired)
        worker.start(LOOKALIKE_EMBED_BATCH_SIZE=str(BATCH))
        for image_id in Image.objects.filter(pk__in=big_batch, state=Image.State.EMBEDDING).values_list("pk",
                                                                                                         flat=True):
            embed_image.delay(image_id)
        assert_one_vector_and_one_index_entry_each(big_batch)


@pytest.mark.worker
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_snapshot_is_searched_around_and_rebuilt(worker, alice_client, caplog, damage):
    files = [upload_file(f"{i}.jpg", images.jpeg(40 + i)) for i in range(3)]
    reply = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json").json()
    ids = [r["image"]["id"] for r in reply["results"]]
    wait_for(lambda: Image.objects.filter(pk__in=ids, state=Image.State.INDEXED).count() == 3, 120,
             message="the images to be indexed")
    store_ = runtime.snapshot_store()
    damaged = wait_for(lambda: (m := store_.read_meta()) and m.applied_seq == last_seq() and m, 60,
                       message="a snapshot")
    path = store_.root / damaged.snapshot_id / "index.hnsw"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3:]
    path.write_bytes(bytes(data))

    # A web process starting now finds the damage, answers from the database rows and asks for a rebuild.
    runtime.drop_index_reader()
    response = alice_client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(41))})
    assert response.status_code == 200
    assert response.context["outcome"].results[0].image.pk == ids[1]
    assert "Ignoring the index snapshot" in caplog.text

    rebuilt = wait_for(lambda: (m := store_.read_meta()) and m.snapshot_id != damaged.snapshot_id and m, 60,
                       message="the writer to rebuild the snapshot")
    assert store_.load(rebuilt, runtime.index_params()).ids() == set(ids)
    assert "Rebuilding the index from the database" in worker.log()


SEARCHER = """
import json, os, sys, time

import django

django.setup()
import numpy as np

from search import runtime, selectors

stop, searches, failures, errors = sys.argv[1], 0, 0, []
rng = np.random.default_rng(os.getpid())
dim = runtime.index_identity().dim
while not os.path.exists(stop):
    query = rng.normal(size=(1, dim)).astype(np.float32)
    query /= np.linalg.norm(query)
    try:
        [hits] = selectors.similar_to_vectors(query, k=10)
        found = [hit.image.pk for hit in hits]
        if len(found) != len(set(found)):
            raise AssertionError(f"an image came back twice: {found}")
        searches += 1
    except Exception as exc:
        failures += 1
        errors.append(repr(exc))
    if searches + failures == 1:
        print("searching", flush=True)
    time.sleep(0.02)
print(json.dumps({"searches": searches, "failures": failures, "errors": errors[:5]}))
"""


@pytest.mark.worker
def test_workers_embed_at_once_while_other_processes_search(worker, tmp_path):
    second = Worker(tmp_path / "second-worker.log")
    second.start()
    second.wait_ready()
    stop = tmp_path / "stop"
    searchers = [subprocess.Popen([sys.executable, "-c", SEARCHER, str(stop)], cwd=PROJECT_ROOT, env=process_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for searcher in searchers:
            assert searcher.stdout.readline().strip() == "searching"
        stored = [store(images.jpeg(100 + i, size=(160, 120)), f"busy-{i}.jpg") for i in range(24)]
        ids = {image.pk for image in stored}
        wait_for(lambda: Image.objects.filter(pk__in=ids, state=Image.State.INDEXED).count() == len(ids), 300,
                 message="every image to be indexed")
        meta = wait_for(lambda: (m := runtime.snapshot_store().read_meta()) and m.applied_seq == last_seq() and m,
                        60, message="a snapshot of every change")
    finally:
        stop.touch()
        outcomes = [searcher.communicate(timeout=120) for searcher in searchers]
        second.stop()
    for out, err in outcomes:
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["failures"] == 0, summary["errors"] or err[-2000:]
        assert summary["searches"] > 0
    assert sorted(Embedding.objects.values_list("image_id", flat=True)) == sorted(ids)
    assert meta.count == len(ids)
    assert runtime.snapshot_store().load(meta, runtime.index_params()).ids() == ids
    assert "search.embed_image" in second.log(), "the second worker took tasks too"


# Nothing listens on port 1: connecting is refused at once, as to a broker that is down.
DEAD_BROKER = "redis://127.0.0.1:1/0"


@pytest.mark.worker
def test_an_upload_while_the_broker_is_down_is_stored_and_embedded_once_it_is_back(worker, tmp_path):
    picture = tmp_path / "while-the-broker-is-down.jpg"
    picture.write_bytes(images.jpeg(61))
    started = time.monotonic()
    imported = manage("import_images", str(picture), env=dict(process_env(), CELERY_BROKER_URL=DEAD_BROKER),
                      timeout=120)
    took = time.monotonic() - started
    assert "1 stored" in imported.stdout, imported.stdout + imported.stderr
    image = Image.objects.get(original_name=picture.name)
    assert image.state == Image.State.QUEUED, "stored, waiting for its task"
    assert took < 60, f"storing the upload took {took:.1f} s with the broker down"

    # Upkeep cannot tell whether a message waits while the broker is down: it sends nothing.
    time.sleep(1.5)
    upkeep = manage("upkeep", env=dict(process_env(), CELERY_BROKER_URL=DEAD_BROKER, LOOKALIKE_STUCK_AFTER_SECONDS="1"))
    assert "0 stuck images queued again" in upkeep.stdout
    image.refresh_from_db()
    assert (image.state, image.retry_after) == (Image.State.QUEUED, None)

    # The broker is back (the worker's own); upkeep sends the task that was lost.
    manage("upkeep", env=dict(process_env(), LOOKALIKE_STUCK_AFTER_SECONDS="1"))
    wait_for(lambda: Image.objects.filter(pk=image.pk, state=Image.State.INDEXED).exists(), 120,
             message="the upload to be embedded once the broker is back")
    assert Embedding.objects.filter(image=image).count() == 1
