"""Writes of the search app: embedding images, and keeping the index in step with the database.

``image_embed`` stores vectors and appends to the change log; ``index_sync`` is the one writer
that applies the log to the HNSW index and publishes snapshots (see ``search.index``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gallery.imaging import open_for_embedding
from gallery.models import Image
from search import changelog, runtime
from search.embedding import Descriptors
from search.identity import IndexIdentity
from search.index import HnswIndex, SnapshotCorrupt, SnapshotMeta, SnapshotStore
from search.models import Embedding, IndexChange
from search.reader import resolve_changes

log = logging.getLogger(__name__)


def queue_index_sync() -> None:
    """Ask the index writer to run once the current transaction commits (at once outside one)."""
    from search.tasks import sync_index

    # robust: a broker that is down must not undo or fail the write that asked; the next
    # change asks again, and readers cover the rows meanwhile.
    transaction.on_commit(sync_index.delay, robust=True)


# Embedding ---------------------------------------------------------------------------------


def queue_embedding(image_id: int) -> None:
    """Ask a worker to embed the image once the current transaction commits."""
    from search.tasks import embed_image

    # robust: a broker that is down must not fail an upload that is already stored; the image
    # stays queued and is picked up again.
    transaction.on_commit(lambda: embed_image.delay(image_id), robust=True)


def images_requeue_all() -> int:
    """Queue every image to be embedded again, e.g. after the backbone setting changed."""
    with transaction.atomic():
        ids = list(Image.objects.values_list("id", flat=True))
        Image.objects.update(state=Image.State.QUEUED, error="", claim_token="", claimed_at=None, indexed_at=None)
        for image_id in ids:
            queue_embedding(image_id)
    return len(ids)


@dataclass(frozen=True)
class EmbedOutcome:
    indexed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def _claim_batch(*, image_id: int, token: str) -> list[Image]:
    """Take this image, and other queued ones to fill a batch, into EMBEDDING under ``token``.

    The state guard in each UPDATE lets exactly one run claim an image. A run may reclaim what
    it claimed before (the same task delivered again after its worker died), and anyone may
    take over a claim whose lease has run out.
    """
    now = timezone.now()
    claim = {"state": Image.State.EMBEDDING, "claim_token": token, "claimed_at": now}
    expired = now - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS)
    claimable = (Q(state=Image.State.QUEUED) | Q(state=Image.State.EMBEDDING, claim_token=token)
                 | Q(state=Image.State.EMBEDDING, claimed_at__lt=expired))
    Image.objects.filter(claimable, id=image_id).update(**claim)
    room = settings.LOOKALIKE_EMBED_BATCH_SIZE - Image.objects.filter(claim_token=token).count()
    if room > 0:
        others = list(Image.objects.filter(state=Image.State.QUEUED).order_by("id").values_list("id", flat=True)[:room])
        Image.objects.filter(id__in=others, state=Image.State.QUEUED).update(**claim)
    return list(Image.objects.filter(claim_token=token, state=Image.State.EMBEDDING).order_by("id"))


def image_embed(*, image_id: int, claim_token: str) -> EmbedOutcome:
    """Embed an image (and a batch of other queued ones), store the vectors and log the change.

    Running it again for an image that is already indexed does nothing.
    """
    images = _claim_batch(image_id=image_id, token=claim_token)
    if not images:
        return EmbedOutcome()
    try:
        embedder = runtime.embedder()
    except Exception as exc:  # missing weights, a bad setting: every image in the batch says why
        log.exception("Cannot load the embedding model")
        return _finish_batch(claim_token, {}, {image.id: str(exc) for image in images})
    if embedder.decodes_jpeg_itself:
        try:
            # The display copies are the site's own JPEGs.
            described = embedder.describe_jpegs([Path(image.display.path).read_bytes() for image in images])
            return _finish_batch(claim_token, _by_image([image.id for image in images], described), {})
        except (RuntimeError, OSError):
            log.warning("Decoding a batch on %s failed; reading it with Pillow to find the bad file", embedder.device)
    prepared: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    for image in images:
        try:
            picture = open_for_embedding(image.display.path, min_side=embedder.recipe.input_size)
            prepared[image.id] = embedder.prepare(picture)
        except Exception as exc:
            failed[image.id] = f"The stored copy of the image could not be read: {exc}"
    return _finish_batch(claim_token, _by_image(list(prepared), embedder.describe_prepared(list(prepared.values()))),
                         failed)


def _by_image(image_ids: list[int], described: Descriptors) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return dict(zip(image_ids, zip(described.vectors, described.local, strict=True), strict=True))


@transaction.atomic
def _finish_batch(token: str, described: dict[int, tuple[np.ndarray, np.ndarray]], failed: dict[int, str]
                  ) -> EmbedOutcome:
    """Store each image's vector and feature map, and record failures, for the images still ours."""
    identity = runtime.index_identity()
    now = timezone.now()
    still_ours = Image.objects.filter(claim_token=token, state=Image.State.EMBEDDING)
    indexed = list(still_ours.filter(id__in=list(described)).values_list("id", flat=True))
    still_ours.filter(id__in=indexed).update(state=Image.State.INDEXED, indexed_at=now, error="", claim_token="",
                                             claimed_at=None)
    for image_id, reason in failed.items():
        still_ours.filter(id=image_id).update(state=Image.State.FAILED, error=reason[:2000], claim_token="",
                                              claimed_at=None)
    Embedding.objects.filter(image_id__in=indexed).other_than(identity).delete()
    Embedding.objects.bulk_create(
        [Embedding(image_id=image_id, backbone=identity.backbone, backbone_version=identity.backbone_version,
                   dim=identity.dim, vector=described[image_id][0].astype(np.float32).tobytes(),
                   local_features=described[image_id][1].astype(np.float16).tobytes())
         for image_id in indexed],
        update_conflicts=True, unique_fields=["image", "backbone", "backbone_version"],
        update_fields=["dim", "vector", "local_features"],
    )
    changelog.record_changes(image_ids=indexed, kind=IndexChange.Kind.UPSERT)
    if indexed:
        queue_index_sync()
    return EmbedOutcome(indexed=indexed, failed=failed)


# The index writer --------------------------------------------------------------------------


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


def index_sync() -> IndexSyncResult:
    """Apply the change log to the index and publish a snapshot, if this process may write.

    Snapshots are spaced by ``_snapshot_spacing``: readers cover the newest rows meanwhile, so
    a burst of uploads costs a few snapshots instead of one per image.
    """
    store = runtime.snapshot_store()
    with store.writer_lock() as is_writer:
        if not is_writer:
            # The writer re-checks the log after releasing the lock, so nothing is missed.
            return IndexSyncResult("busy")
        result = _sync_as_writer(store)
    # A change committed while this run held the lock found it busy and gave up: run again.
    if result.status in ("published", "up_to_date") and result.meta and changelog.last_seq() > result.meta.applied_seq:
        queue_index_sync()
    return result


def _sync_as_writer(store: SnapshotStore) -> IndexSyncResult:
    identity = runtime.index_identity()
    latest = changelog.last_seq()
    meta = _usable_meta(store, identity, latest)
    if meta is None:
        return IndexSyncResult("published", _rebuild_as_writer(store, identity))
    if latest <= meta.applied_seq:
        return IndexSyncResult("up_to_date", meta)
    wait = meta.created_at + _snapshot_spacing(meta) - time.time()
    if wait > 0:
        if _claim_deferred_run(store, wait):
            return IndexSyncResult("deferred", meta, retry_in=wait)
        return IndexSyncResult("scheduled", meta)
    (store.root / _DEFER_FILE).unlink(missing_ok=True)
    index = _load_writer_index(store, meta)
    if index is None:
        return IndexSyncResult("published", _rebuild_as_writer(store, identity))
    applied = meta.applied_seq
    source = changelog.DatabaseChangeSource(identity)
    while changes := source.changes_after(applied, limit=_APPLY_CHUNK):
        fresh, gone = resolve_changes(changes, source)
        if fresh:
            index.upsert(np.fromiter(fresh, dtype=np.int64, count=len(fresh)), np.stack(list(fresh.values())))
        index.remove(gone)
        applied = changes[-1].seq
    return IndexSyncResult("published", _publish(store, index, applied))


def _snapshot_spacing(meta: SnapshotMeta) -> float:
    """Seconds between snapshots: the setting, stretched so that publishing a large index takes
    at most a fifth of the writer's time. An interval of 0 publishes after every change."""
    interval = settings.LOOKALIKE_SNAPSHOT_INTERVAL
    return max(interval, 5 * meta.publish_seconds) if interval > 0 else 0.0


def _usable_meta(store: SnapshotStore, identity: IndexIdentity, latest_seq: int) -> SnapshotMeta | None:
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


def _load_writer_index(store: SnapshotStore, meta: SnapshotMeta) -> HnswIndex | None:
    cached = _writer_index.get(store.root)
    if cached and cached[0] == meta.snapshot_id:
        return cached[1]
    try:
        return store.load(meta, runtime.index_params())
    except SnapshotCorrupt as exc:
        log.error("Rebuilding the index from the database: %s", exc)
        return None


def _claim_deferred_run(store: SnapshotStore, wait: float) -> bool:
    """True when the caller should schedule a later run; False when one is already scheduled."""
    marker = store.root / _DEFER_FILE
    try:
        scheduled = float(marker.read_text())
    except (FileNotFoundError, ValueError):
        scheduled = 0.0
    # A scheduled run that has not come 30 s after its time was lost with its worker.
    if time.time() < scheduled + 30:
        return False
    marker.write_text(str(time.time() + wait))
    return True


def _publish(store: SnapshotStore, index: HnswIndex, applied_seq: int) -> SnapshotMeta:
    meta = store.publish(index, applied_seq=applied_seq)
    _writer_index[store.root] = (meta.snapshot_id, index)
    log.info("Published index snapshot %s: %d vectors, %d deleted, in %.2f s", meta.snapshot_id, meta.count,
             meta.deleted, meta.publish_seconds)
    return meta


def _rebuild_as_writer(store: SnapshotStore, identity: IndexIdentity) -> SnapshotMeta:
    # The log position is read before the vectors: a change committed in between is then both
    # in the vectors and replayed after the snapshot, which is harmless, and never in neither.
    applied = changelog.last_seq()
    vectors = changelog.vectors_for(identity)
    index = HnswIndex(identity, runtime.index_params(), capacity=int(len(vectors) * 1.25) + 16)
    if vectors:
        index.upsert(np.fromiter(vectors, dtype=np.int64, count=len(vectors)), np.stack(list(vectors.values())))
    return _publish(store, index, applied)


def index_rebuild(*, wait_seconds: float = 600.0) -> SnapshotMeta:
    """Build the index afresh from every stored vector and publish it, waiting for the writer lock."""
    store = runtime.snapshot_store()
    deadline = time.monotonic() + wait_seconds
    while True:
        with store.writer_lock() as is_writer:
            if is_writer:
                return _rebuild_as_writer(store, runtime.index_identity())
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process held the index writer lock for {wait_seconds:.0f} s")
        time.sleep(0.2)
