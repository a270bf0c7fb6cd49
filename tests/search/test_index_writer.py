"""The one writer of the index: syncs, rebuilds, take-overs and the generation it keeps to."""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection

from core.identity import IndexIdentity
from core.index import HnswIndex
from search import generations, index_writer, runtime, services
from search.changelog import last_seq
from tests import images
from tests.conftest import PROJECT_ROOT, process_env, store_indexed, wait_for
from tests.snapshot_stores import damage


@pytest.fixture
def snapshot_store(request, store_kind, clean_index):
    """The active generation's store: a local folder, or the S3 gateway with a bucket of this test's."""
    if store_kind == "gateway":
        request.getfixturevalue("s3_bucket")
    return runtime.snapshot_store()


class TestIndexSync:
    def test_the_first_run_publishes_every_stored_vector(self, db, snapshot_store):
        stored = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(3)]
        result = index_writer.index_sync()
        assert result.status == "published"
        assert (result.meta.count, result.meta.applied_seq) == (3, last_seq())
        index = snapshot_store.load(result.meta, runtime.index_params())
        assert index.ids() == {image.pk for image in stored}

    def test_it_reports_up_to_date_when_nothing_changed(self, db, snapshot_store):
        store_indexed(images.jpeg(1))
        index_writer.index_sync()
        assert index_writer.index_sync().status == "up_to_date"

    def test_it_applies_additions_and_removals_since_the_last_snapshot(self, db, snapshot_store, settings):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
        keep, drop = store_indexed(images.jpeg(1), "keep.jpg"), store_indexed(images.jpeg(2), "drop.jpg")
        index_writer.index_sync()
        added = store_indexed(images.jpeg(3), "added.jpg")
        from gallery.services import image_delete
        drop_id = drop.pk
        image_delete(image=drop)
        result = index_writer.index_sync()
        assert result.status == "published"
        index = snapshot_store.load(result.meta, runtime.index_params())
        assert index.ids() == {keep.pk, added.pk}
        assert result.meta.deleted == 1
        assert drop_id not in index.ids()

    def test_snapshots_are_spaced_by_the_interval(self, db, snapshot_store, settings,
                                                  django_capture_on_commit_callbacks):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 60
        store_indexed(images.jpeg(1))
        first = index_writer.index_sync()
        store_indexed(images.jpeg(2))
        deferred = index_writer.index_sync()
        assert deferred.status == "deferred"
        assert 50 < deferred.retry_in <= 60
        with django_capture_on_commit_callbacks() as queued:
            assert index_writer.index_sync().status == "scheduled"
        assert queued == [], "a run that finds one scheduled asks for no other"
        assert snapshot_store.read_meta() == first.meta

    def test_the_scheduled_run_goes_on_when_it_comes_early(self, db, snapshot_store, settings):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 60
        store_indexed(images.jpeg(1))
        index_writer.index_sync()
        store_indexed(images.jpeg(2))
        assert index_writer.index_sync().status == "deferred"
        again = index_writer.index_sync(deferred=True)
        assert again.status == "deferred", "the scheduled run schedules itself again rather than trusting itself"
        assert 50 < again.retry_in <= 60
        assert index_writer.index_sync().status == "scheduled"

    def test_the_scheduled_run_tries_again_while_another_process_writes(self, db, snapshot_store):
        store_indexed(images.jpeg(1))
        with generations.active().writer_lock() as held:
            assert held
            busy = index_writer.index_sync(deferred=True)
        assert busy.status == "deferred"
        assert 0 < busy.retry_in <= 1
        assert index_writer.index_sync(deferred=True).status == "published"

    def test_a_slow_publish_stretches_the_spacing(self, db, snapshot_store, settings):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0.01
        store_indexed(images.jpeg(1))
        meta = index_writer.index_sync().meta
        slow = dataclasses.replace(meta, publish_seconds=10.0, snapshot_id="slow")
        assert index_writer._snapshot_spacing(slow) == 50.0
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
        assert index_writer._snapshot_spacing(slow) == 0.0

    def test_a_second_writer_backs_off(self, db, snapshot_store):
        store_indexed(images.jpeg(1))
        with generations.active().writer_lock() as held:
            assert held
            assert index_writer.index_sync().status == "busy"
        assert index_writer.index_sync().status == "published"

    def test_a_corrupted_snapshot_is_rebuilt_from_the_database(self, db, snapshot_store, settings, caplog):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
        stored = store_indexed(images.jpeg(1))
        params = runtime.index_params()
        first = index_writer.index_sync().meta
        # Another process publishes the next snapshot, which this process must then read from disk.
        other = snapshot_store.publish(snapshot_store.load(first, params), applied_seq=first.applied_seq)
        damage(snapshot_store, other.snapshot_id)
        store_indexed(images.jpeg(2))
        result = index_writer.index_sync()
        assert result.status == "published"
        assert result.meta.count == 2
        assert stored.pk in snapshot_store.load(result.meta, params).ids()
        assert "Rebuilding the index from the database" in caplog.text

    def test_a_damaged_snapshot_with_nothing_new_to_apply_is_rebuilt_when_asked_to_verify(
            self, db, snapshot_store, caplog):
        stored = store_indexed(images.jpeg(1))
        first = index_writer.index_sync().meta
        damage(snapshot_store, first.snapshot_id)
        assert index_writer.index_sync().status == "up_to_date", "an ordinary run does not read the files"
        result = index_writer.index_sync(verify=True)
        assert result.status == "published"
        assert result.meta.snapshot_id != first.snapshot_id
        assert snapshot_store.load(result.meta, runtime.index_params()).ids() == {stored.pk}
        assert "Rebuilding the index from the database" in caplog.text
        assert index_writer.index_sync(verify=True).status == "up_to_date"

    def test_a_snapshot_ahead_of_the_database_is_rebuilt(self, db, snapshot_store):
        store_indexed(images.jpeg(1))
        index = HnswIndex(runtime.index_identity(), runtime.index_params())
        snapshot_store.publish(index, applied_seq=last_seq() + 1000)
        result = index_writer.index_sync()
        assert (result.status, result.meta.count, result.meta.applied_seq) == ("published", 1, last_seq())

    def test_a_snapshot_of_another_model_is_replaced(self, db, snapshot_store):
        store_indexed(images.jpeg(1))
        identity = runtime.index_identity()
        other = HnswIndex(IndexIdentity(identity.backbone, "older-recipe", identity.dim), runtime.index_params())
        snapshot_store.publish(other, applied_seq=last_seq())
        result = index_writer.index_sync()
        assert result.meta.backbone_version == identity.backbone_version
        assert result.meta.count == 1


def test_a_writer_that_cannot_reach_the_object_store_tries_again_later(db, clean_index, s3_bucket, settings,
                                                                       caplog):
    from config.object_store import snapshot_store_client

    store_indexed(images.jpeg(1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.LOOKALIKE_S3_ENDPOINT_URL = f"http://127.0.0.1:{sock.getsockname()[1]}"
    snapshot_store_client.cache_clear()
    result = index_writer.index_sync()
    assert (result.status, result.retry_in) == ("deferred", 10.0)
    assert "Could not publish the index, trying again in 10 s" in caplog.text
    assert not list(settings.INDEX_CACHE_DIR.rglob("*.tmp"))


def test_rebuild_publishes_every_vector(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(4)]
    meta = index_writer.index_rebuild()
    assert meta.count == 4
    assert runtime.snapshot_store().load(meta, runtime.index_params()).ids() == {i.pk for i in stored}


def test_rebuild_waits_for_the_writer_and_then_gives_up(db, clean_index):
    with generations.active().writer_lock():
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="writer lock"):
            index_writer.index_rebuild(wait_seconds=0.5)
        assert time.monotonic() - started >= 0.5


# A writer that publishes, says so, and goes on holding the lock (as if in the middle of its work).
_HOLD_THE_LOCK = """
import time
from search import generations, index_writer
generation = generations.active()
with generation.writer_lock() as held:
    assert held
    meta = index_writer._sync_as_writer(generation, verify=False, deferred=False).meta
    print("published", meta.snapshot_id, flush=True)
    time.sleep(600)
"""
_TAKE_OVER = """
import time
from search import index_writer
while (result := index_writer.index_sync()).status == "busy":
    print("busy", flush=True)
    time.sleep(0.2)
print(result.status, result.meta.snapshot_id, flush=True)
"""


def _shell(code: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "manage.py", "shell", "-c", code], cwd=PROJECT_ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_a_writer_killed_while_holding_the_lock_is_taken_over_from_its_last_snapshot(
        request, store_kind, transactional_db, clean_index, monkeypatch, tmp_path):
    env = process_env()
    if store_kind == "gateway":
        request.getfixturevalue("s3_bucket")
        from django.conf import settings

        env.update({name: str(getattr(settings, name)) for name in dir(settings) if name.startswith("LOOKALIKE_S3_")})
    # No sync task: a worker left running by an earlier test would write the index itself.
    monkeypatch.setattr(services, "queue_index_sync", lambda **kwargs: None)
    first = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(2)]
    other_host = dict(env)
    if store_kind == "gateway" and connection.vendor == "postgresql":
        # Another machine: nothing of the index on its disk but what it downloads.
        other_host["DATA_DIR"] = str(tmp_path / "other-host")
    holder = _shell(_HOLD_THE_LOCK, env, tmp_path / "holder.log")
    successor = None
    try:
        published = wait_for(lambda: [line.split()[1] for line in (tmp_path / "holder.log").read_text().splitlines()
                                      if line.startswith("published ")], 120, message="the first writer to publish")
        later = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(2, 4)]
        successor = _shell(_TAKE_OVER, other_host, tmp_path / "successor.log")
        wait_for(lambda: "busy" in (tmp_path / "successor.log").read_text(), 120,
                 message="the second writer to be refused")
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(30)
        assert successor.wait(120) == 0, (tmp_path / "successor.log").read_text()
    finally:
        for process in (holder, successor):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
    out = (tmp_path / "successor.log").read_text()
    assert f"Continuing from index snapshot {published[0]}" in out
    assert "Rebuilding" not in out
    status, snapshot_id = out.strip().splitlines()[-1].split()
    assert status == "published"
    meta = runtime.snapshot_store().read_meta()
    assert (meta.snapshot_id, meta.applied_seq, meta.count, meta.deleted) == (snapshot_id, last_seq(), 4, 0)
    index = runtime.snapshot_store().load(meta, runtime.index_params())
    assert index.ids() == {image.pk for image in first + later}
    if other_host["DATA_DIR"] != env["DATA_DIR"]:
        assert published[0] in os.listdir(tmp_path / "other-host" / "var" / "index-cache" / generations.active().name)


def test_index_sync_keeps_to_the_generation_whose_lock_it_took(db, clean_index, monkeypatch):
    store_indexed(images.jpeg(1))
    index_writer.index_sync()
    before = generations.active()
    original_lock = generations.Generation.writer_lock

    @contextmanager
    def switch_generations_once_locked(self):
        with original_lock(self) as is_writer:
            # A reindex to another backbone switches generations between the sync's reads.
            generations.activate(generations.Generation(name="resnet50-g0", backbone="resnet50", m=16,
                                                        ef_construction=200))
            yield is_writer

    monkeypatch.setattr(generations.Generation, "writer_lock", switch_generations_once_locked)
    index_writer.index_sync()
    assert before.store.read_meta().identity == before.identity
