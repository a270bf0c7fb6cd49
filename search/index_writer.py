"""The one writer of the index: it applies the change log to the HNSW index in memory and publishes
snapshots (see ``core.index``), behind the generation's writer lock.

``index_sync`` runs after every batch that logged changes (the ``search.sync_index`` task);
``index_rebuild`` and ``index_repair`` are the operator's commands; a reindex applies the log to
the index it builds with ``index_apply_changes``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from django.conf import settings

from core.identity import IndexIdentity
from core.index import HnswIndex, SnapshotCorrupt, SnapshotMeta, Snapshots, SnapshotUnavailable, stacked
from core.reader import resolve_changes
from search import changelog, generations
from search.models import Embedding
from search.queues import queue_index_sync

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class IndexSyncResult:
    # "published" or "up_to_date"; "busy" when another process is the writer; "deferred" when the
    # caller should run it again in ``retry_in`` seconds; "scheduled" when such a run exists.
    status: str
    meta: SnapshotMeta | None = None
    retry_in: float = 0.0


# The writer's index lives on in the worker process between runs, tagged with the snapshot it
# matches; if another process published since, it is reloaded from that snapshot.
_writer_index: dict[Path, tuple[str, HnswIndex]] = {}
_DEFER_FILE = "deferred-until"
_APPLY_CHUNK = 5000
_BUSY_RETRY_SECONDS = 1.0
_STORE_RETRY_SECONDS = 10.0


def index_sync(*, verify: bool = False, deferred: bool = False) -> IndexSyncResult:
    """Apply the change log to the index and publish a snapshot, if this process may write.

    Snapshots are spaced by ``_snapshot_spacing``: readers cover the newest rows meanwhile, so
    a burst of uploads costs a few snapshots instead of one per image. A run that comes too soon
    schedules one ``deferred`` run, which every other run then leaves the publishing to. With
    ``verify``, a published snapshot whose files do not match their checksums is rebuilt from the
    database even when no change is waiting.
    """
    # Read once: a reindex may switch generations meanwhile, and this run writes the folder it locked.
    generation = generations.active()
    with generation.writer_lock() as is_writer:
        if not is_writer:
            if deferred:
                # The writer may have left the changes to this run, seeing it scheduled: try again.
                return IndexSyncResult("deferred", retry_in=_BUSY_RETRY_SECONDS)
            # The writer re-checks the log after releasing the lock, so nothing is missed.
            return IndexSyncResult("busy")
        try:
            result = _sync_as_writer(generation, verify=verify, deferred=deferred)
        except SnapshotUnavailable as exc:
            # Readers cover the changes from the database meanwhile; nothing was published half.
            log.error("Could not publish the index, trying again in %.0f s: %s", _STORE_RETRY_SECONDS, exc)
            return IndexSyncResult("deferred", retry_in=_STORE_RETRY_SECONDS)
    # A change committed while this run held the lock found it busy and gave up: run again.
    if result.status in ("published", "up_to_date") and result.meta and changelog.last_seq() > result.meta.applied_seq:
        queue_index_sync()
    return result


def _sync_as_writer(generation: generations.Generation, *, verify: bool, deferred: bool) -> IndexSyncResult:
    store, identity = generation.store, generation.identity
    latest = changelog.last_seq()
    meta = _usable_meta(store, identity, latest)
    if meta is not None and verify:
        try:
            store.verify(meta)
        except SnapshotCorrupt as exc:
            log.error("Rebuilding the index from the database: %s", exc)
            meta = None
    if meta is None:
        return IndexSyncResult("published", _rebuild_as_writer(generation))
    if latest <= meta.applied_seq:
        return IndexSyncResult("up_to_date", meta)
    wait = meta.created_at + _snapshot_spacing(meta) - time.time()
    if wait > 0:
        # The scheduled run itself may come a little early, or after another publish: it goes on.
        if _claim_deferred_run(store, wait, scheduled_run=deferred):
            return IndexSyncResult("deferred", meta, retry_in=wait)
        return IndexSyncResult("scheduled", meta)
    (store.root / _DEFER_FILE).unlink(missing_ok=True)
    index = _load_writer_index(generation, meta)
    if index is None:
        return IndexSyncResult("published", _rebuild_as_writer(generation))
    applied = index_apply_changes(index=index, after_seq=meta.applied_seq)
    return IndexSyncResult("published", _publish(store, index, applied))


def index_apply_changes(*, index: HnswIndex, after_seq: int) -> int:
    """Apply the change log after ``after_seq`` to an index; returns the last sequence applied."""
    applied = after_seq
    source = changelog.DatabaseChangeSource(index.identity)
    while changes := source.changes_after(applied, limit=_APPLY_CHUNK):
        fresh, gone = resolve_changes(changes, source)
        index.upsert(*stacked(fresh, index.identity.dim))
        index.remove(gone)
        applied = changes[-1].seq
    return applied


def _snapshot_spacing(meta: SnapshotMeta) -> float:
    """Seconds between snapshots: the setting, stretched so that publishing a large index takes
    at most a fifth of the writer's time. An interval of 0 publishes after every change."""
    interval = settings.LOOKALIKE_SNAPSHOT_INTERVAL
    return max(interval, 5 * meta.publish_seconds) if interval > 0 else 0.0


def _usable_meta(store: Snapshots, identity: IndexIdentity, latest_seq: int) -> SnapshotMeta | None:
    try:
        meta = store.read_meta()
    except SnapshotCorrupt as exc:
        log.error("Rebuilding the index from the database: %s", exc)
        return None
    if meta is not None and meta.identity != identity:
        log.warning("Rebuilding the index: it holds %s vectors, the site now uses %s",
                    meta.identity.describe(), identity.describe())
        return None
    if meta is not None and meta.applied_seq > latest_seq:
        log.error("Rebuilding the index: its snapshot is ahead of the database (restored from a backup?)")
        return None
    return meta


def _load_writer_index(generation: generations.Generation, meta: SnapshotMeta) -> HnswIndex | None:
    cached = _writer_index.get(generation.store.root)
    if cached and cached[0] == meta.snapshot_id:
        return cached[1]
    try:
        index = generation.store.load(meta, generation.params)
    except SnapshotCorrupt as exc:
        log.error("Rebuilding the index from the database: %s", exc)
        return None
    # This process took over from another writer, or started afresh: it goes on from the last publish.
    log.info("Continuing from index snapshot %s (change %d)", meta.snapshot_id, meta.applied_seq)
    return index


def _claim_deferred_run(store: Snapshots, wait: float, *, scheduled_run: bool) -> bool:
    """True when the caller should schedule a later run; False when one is already scheduled."""
    marker = store.root / _DEFER_FILE
    # With an object store the marker is this machine's: another host's run may schedule one more.
    store.root.mkdir(parents=True, exist_ok=True)
    try:
        scheduled = float(marker.read_text())
    except (FileNotFoundError, ValueError):
        scheduled = 0.0
    # A scheduled run that has not come 30 s after its time was lost with its worker.
    if not scheduled_run and time.time() < scheduled + 30:
        return False
    marker.write_text(str(time.time() + wait))
    return True


def _publish(store: Snapshots, index: HnswIndex, applied_seq: int) -> SnapshotMeta:
    meta = store.publish(index, applied_seq=applied_seq)
    _writer_index[store.root] = (meta.snapshot_id, index)
    log.info("Published index snapshot %s: %d vectors, %d deleted, in %.2f s", meta.snapshot_id, meta.count,
             meta.deleted, meta.publish_seconds)
    return meta


def _rebuild_as_writer(generation: generations.Generation) -> SnapshotMeta:
    # The log position is read before the vectors: a change committed in between is then both
    # in the vectors and replayed after the snapshot, which is harmless, and never in neither.
    applied = changelog.last_seq()
    vectors = changelog.vectors_for(generation.identity)
    index = HnswIndex(generation.identity, generation.params, capacity=int(len(vectors) * 1.25) + 16)
    index.upsert(*stacked(vectors, generation.identity.dim))
    return _publish(generation.store, index, applied)


@dataclass(frozen=True)
class Reconciled:
    added: int
    removed: int


def index_reconcile(*, index: HnswIndex, identity: IndexIdentity) -> Reconciled:
    """Add the stored vectors the index lacks and remove the ids it holds without one."""
    stored = set(Embedding.objects.of(identity).values_list("image_id", flat=True))
    held = index.ids()
    missing, extra = stored - held, held - stored
    vectors = changelog.vectors_for(identity, missing) if missing else {}
    index.upsert(*stacked(vectors, identity.dim))
    index.remove(extra)
    return Reconciled(added=len(vectors), removed=len(extra))


def _as_writer(work: Callable[[generations.Generation], T], wait_seconds: float) -> T:
    deadline = time.monotonic() + wait_seconds
    while True:
        # Read again on each try: a reindex may have switched generations while this one waited.
        generation = generations.active()
        with generation.writer_lock() as is_writer:
            if is_writer:
                return work(generation)
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process held the index writer lock for {wait_seconds:.0f} s")
        time.sleep(0.2)


def index_rebuild(*, wait_seconds: float = 600.0) -> SnapshotMeta:
    """Build the index afresh from every stored vector and publish it, waiting for the writer lock."""
    return _as_writer(_rebuild_as_writer, wait_seconds)


@dataclass(frozen=True)
class IndexRepair:
    reconciled: Reconciled
    rebuilt: str = ""  # why the snapshot was rebuilt from the database instead, if it was


def index_repair(*, wait_seconds: float = 600.0) -> IndexRepair:
    """Check the published index against the database and publish a repaired one if they differ:
    vectors missing from it are added, ids without a vector in the database are removed."""
    return _as_writer(_repair_as_writer, wait_seconds)


def _repair_as_writer(generation: generations.Generation) -> IndexRepair:
    store, identity = generation.store, generation.identity
    meta = _usable_meta(store, identity, changelog.last_seq())
    try:
        # From disk, not this process's copy: the snapshot is what readers search.
        index = store.load(meta, generation.params) if meta else None
    except SnapshotCorrupt as exc:
        index, reason = None, str(exc)
    else:
        reason = "there was no usable snapshot"
    if index is None or meta is None:
        rebuilt = _rebuild_as_writer(generation)
        return IndexRepair(Reconciled(added=rebuilt.count, removed=0), rebuilt=reason)
    applied = index_apply_changes(index=index, after_seq=meta.applied_seq)
    reconciled = index_reconcile(index=index, identity=identity)
    if reconciled.added or reconciled.removed or applied != meta.applied_seq:
        _publish(store, index, applied)
    if reconciled.added or reconciled.removed:
        log.warning("Repaired the index: added %d missing vectors, removed %d without one in the database",
                    reconciled.added, reconciled.removed)
    return IndexRepair(reconciled)
