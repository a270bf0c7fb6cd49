"""Reindexing without taking search down: build a whole new index generation in the background,
check it, then switch every process to it at once (see ``search.generations``).

The run (a ``jobs`` runner) holds the writer lock of the new generation, so it is the
one writer of that index while the current generation goes on answering searches and taking
changes through ``index_sync``. It works in batches and records a checkpoint after each, with a
partial snapshot every few batches, so that a run whose worker was killed resumes from there:

1. embed (only when the backbone changes): every image without a vector of the new backbone.
   Uploads meanwhile are embedded with both backbones by ``image_embed``;
2. build: add the new identity's stored vectors, in image-id order, to a fresh HNSW index;
3. catch up: replay the change log from the position read before the build and reconcile the
   index with the vectors in the database, so that what changed during the build is in it;
4. self-check: sampled images must find themselves first and the counts must match the database;
5. publish, then name the new generation active in the database; the old backbone's vectors are
   removed afterwards.

The partial snapshots stay on the machine that runs the job (``INDEX_DIR/.build-<name>``): a run
resumed on another host finds none there and builds the index again from the first image (the
embedding, whose checkpoint is in the database, is not repeated).

A failed or cancelled run leaves the current generation serving and says why in the job.
"""
from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass, replace

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction

from core.backbones import get_backbone
from core.imaging import ImageRejected
from core.index import HnswIndex, SnapshotCorrupt, SnapshotStore, stacked
from gallery.models import Image
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun, JobStopped
from search import changelog, generations, runtime
from search.generations import Generation
from search.index_writer import index_apply_changes, index_reconcile
from search.models import Embedding, IndexChange
from search.queues import queue_index_sync
from search.services import embeddings_store, images_embed_with, images_requeue_unembedded

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
# A partial index is saved at most this often, so a resumed run repeats little work.
CHECKPOINT_SECONDS = 10.0
SELF_CHECK_SAMPLE = 200
# A run that cannot get the new folder's writer lock (a stalled earlier run still holds it)
# gives up after this long; upkeep resumes it again later.
LOCK_WAIT_SECONDS = 60.0


class ReindexRefused(ValueError):
    """A reindex cannot start as asked; the message says why."""


class SelfCheckFailed(RuntimeError):
    """The new index does not match the database; it is not put in service."""


def reindex_start(*, backbone: str | None = None, m: int | None = None, ef_construction: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, started_by: User | AnonymousUser | None = None
                  ) -> Job:
    """Queue a reindex to a new generation; unset parameters keep the current generation's values
    (the backbone defaults to the LOOKALIKE_BACKBONE setting)."""
    backbone = backbone or settings.LOOKALIKE_BACKBONE
    try:
        get_backbone(backbone)
    except (KeyError, ValueError) as exc:
        raise ReindexRefused(str(exc.args[0] if exc.args else exc)) from None
    current = generations.active()
    m = current.m if m is None else m
    ef_construction = current.ef_construction if ef_construction is None else ef_construction
    if m < 2:
        raise ReindexRefused(f"--m must be at least 2, not {m}")
    if ef_construction < 1:
        raise ReindexRefused(f"--ef-construction must be at least 1, not {ef_construction}")
    if batch_size < 1:
        raise ReindexRefused(f"--batch-size must be at least 1, not {batch_size}")
    with transaction.atomic():
        running = Job.objects.select_for_update().filter(kind=Job.Kind.REINDEX, state__in=Job.ACTIVE_STATES).first()
        if running:
            raise ReindexRefused(f"{running} is already {running.get_state_display().lower()}; cancel it first")
        return job_services.job_start(kind=Job.Kind.REINDEX, started_by=started_by,
                                      params={"backbone": backbone, "m": m, "ef_construction": ef_construction,
                                              "batch_size": batch_size})


def _partial_store(target: Generation) -> SnapshotStore:
    return SnapshotStore(settings.INDEX_DIR / f".build-{target.name}")


@dataclass
class _Progress:
    run: JobRun
    checkpoint: dict

    def step(self, *, done: int | None = None, phase: str | None = None, failed: int | None = None) -> None:
        self.run.step(done=done, phase=phase, failed=failed, checkpoint=dict(self.checkpoint))


def reindex_run(run: JobRun) -> str:
    """The runner of reindex jobs (see the module docstring); returns the summary."""
    target = generations.built_by(run.job)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        with target.writer_lock() as is_writer:
            if is_writer:
                try:
                    summary = _run_as_writer(run, target)
                except JobStopped:
                    if Job.objects.filter(pk=run.job.pk, cancel_requested=True).exists():
                        _discard(target)
                    raise
                except Exception:
                    _discard(target)
                    raise
        if is_writer:
            # Asked now, not before the purge: a sync asked while this run held the lock found it busy.
            queue_index_sync()
            return summary
        run.step()
        if time.monotonic() > deadline:
            raise RuntimeError(f"another run held the writer lock of {target.name} for {LOCK_WAIT_SECONDS:.0f} s")
        time.sleep(0.5)


def _run_as_writer(run: JobRun, target: Generation) -> str:
    started = time.monotonic()
    current = generations.active()
    identity = target.identity
    reembed = identity != current.identity
    progress = _Progress(run, dict(run.job.checkpoint))
    cp = progress.checkpoint
    if "start_seq" not in cp:
        # Read before any vector: a change committed meanwhile is replayed in the catch-up.
        cp["start_seq"] = changelog.last_seq()
        images = Image.objects.filter(state=Image.State.INDEXED).count()
        run.step(total=images * (2 if reembed else 1), done=0, phase="starting", checkpoint=dict(cp))
    if reembed:
        _embed_missing(progress, target)
    index = _build(progress, target)
    if reembed:
        # Images that were being embedded when the reindex began may have only the old vector.
        cp["embedded_after"] = 0
        _embed_missing(progress, target)
    _catch_up(progress, target, index)
    progress.step(phase="self-check")
    checked = _self_check(target, index, as_of_seq=cp["catch_up_seq"])
    meta = target.store.publish(index, applied_seq=cp["catch_up_seq"])
    replaced = (current.identity.backbone, current.identity.backbone_version) if reembed else current.replaced
    with transaction.atomic():
        # Under the job's row lock, which every embedding batch holds while it commits: a batch
        # commits wholly before the switch, and is seen below, or reads the new generation.
        Job.objects.select_for_update().filter(pk=run.job.pk).first()
        generations.activate(replace(target, replaced=replaced))
        # The self-check leaves out images changed after the catch-up: one whose batch stored no
        # vector of the new backbone would be left indexed with none once the old ones are purged.
        requeued = images_requeue_unembedded()
    log.info("Index generation %s is now in service: %d vectors of %s", target.name, meta.count, identity.describe())
    shutil.rmtree(_partial_store(target).root, ignore_errors=True)
    generations.prune(keep={target.name, current.name})
    purged = _purge_vectors_other_than(target) if reembed else 0
    return (f"Generation {target.name} in service: {meta.count} vectors of {identity.describe()}, "
            f"M={target.m}, ef_construction={target.ef_construction}; self-check: {checked}"
            f"{f'; removed {purged} vectors of the previous backbone' if purged else ''}"
            f"{f'; {requeued} images changed meanwhile queued to be embedded again' if requeued else ''}; "
            f"took {time.monotonic() - started:.1f} s.")


def _embed_missing(progress: _Progress, target: Generation) -> None:
    identity = target.identity
    embedder = runtime.embedder_for(target.backbone)
    cp = progress.checkpoint
    batch_size = progress.run.job.params["batch_size"]
    if cp.get("embedded_after"):
        log.info("Resuming the embedding for %s after image #%d", target.name, cp["embedded_after"])
    failed: dict[int, str | ImageRejected] = {}
    while True:
        after = cp.get("embedded_after", 0)
        batch = list(Image.objects.filter(state=Image.State.INDEXED, id__gt=after)
                     .exclude(embeddings__backbone=identity.backbone,
                              embeddings__backbone_version=identity.backbone_version)
                     .order_by("id")[:batch_size])
        if not batch:
            break
        described, batch_failed = images_embed_with(embedder=embedder, images=batch)
        embeddings_store(identity=identity, described=described)
        failed.update(batch_failed)
        cp["embedded_after"] = batch[-1].id
        cp["embedded"] = cp.get("embedded", 0) + len(batch)
        progress.step(phase="embedding", done=cp["embedded"], failed=len(failed))
    if failed:
        first = next(iter(failed.items()))
        raise RuntimeError(f"{len(failed)} images could not be embedded with {target.backbone} "
                           f"(image #{first[0]}: {first[1]})")


def _build(progress: _Progress, target: Generation) -> HnswIndex:
    identity = target.identity
    cp = progress.checkpoint
    partial = _partial_store(target)
    index = None
    if cp.get("built_after"):
        try:
            meta = partial.read_meta()
            if meta is not None and meta.identity == identity:
                index = partial.load(meta, target.params)
                log.info("Resuming the build of %s after image #%d", target.name, cp["built_after"])
        except SnapshotCorrupt as exc:
            log.warning("Starting the build of %s again: %s", target.name, exc)
    if index is None:
        cp["built_after"] = cp["built"] = 0
        count = Embedding.objects.of(identity).count()
        index = HnswIndex(identity, target.params, capacity=int(count * 1.25) + 16)
    base = cp.get("embedded", 0)
    after, built = cp["built_after"], cp["built"]
    saved_at = time.monotonic()
    rows = Embedding.objects.of(identity).order_by("image_id").values_list("image_id", "vector")
    while batch := list(rows.filter(image_id__gt=after)[:progress.run.job.params["batch_size"]]):
        index.upsert(*stacked(changelog.decode_vectors(identity, batch), identity.dim))
        after, built = batch[-1][0], built + len(batch)
        if time.monotonic() - saved_at > CHECKPOINT_SECONDS:
            # The checkpoint names what the saved partial index holds, never more.
            partial.publish(index, applied_seq=cp["start_seq"])
            cp["built_after"], cp["built"] = after, built
            saved_at = time.monotonic()
        progress.step(phase="building", done=base + built)
    return index


def _catch_up(progress: _Progress, target: Generation, index: HnswIndex) -> None:
    """Apply what changed since the build began, then make the index hold exactly the stored vectors."""
    progress.step(phase="catching up")
    progress.checkpoint["catch_up_seq"] = index_apply_changes(index=index, after_seq=progress.checkpoint["start_seq"])
    index_reconcile(index=index, identity=target.identity)


def _self_check(target: Generation, index: HnswIndex, *, as_of_seq: int) -> str:
    identity = target.identity
    # Images changed after the catch-up are left to the writer and the readers' tail.
    recent = set(IndexChange.objects.filter(seq__gt=as_of_seq).values_list("image_id", flat=True))
    stored = set(Embedding.objects.of(identity).values_list("image_id", flat=True)) - recent
    held = index.ids() - recent
    if held != stored:
        raise SelfCheckFailed(f"the new index holds {len(held)} vectors, the database {len(stored)} "
                              f"({len(stored - held)} missing, {len(held - stored)} not in the database)")
    unembedded = set(Image.objects.filter(state=Image.State.INDEXED)
                     .exclude(embeddings__backbone=identity.backbone,
                              embeddings__backbone_version=identity.backbone_version)
                     .values_list("id", flat=True)) - recent
    if unembedded:
        raise SelfCheckFailed(f"{len(unembedded)} indexed images have no {target.backbone} vector "
                              f"(e.g. image #{min(unembedded)})")
    ids = sorted(index.ids())
    sample = random.Random(0).sample(ids, min(SELF_CHECK_SAMPLE, len(ids)))
    vectors = changelog.vectors_for(identity, sample)
    lost = []
    for image_id in sample:
        labels, scores = index.search(vectors[image_id][None, :], 2)
        found = labels[0].tolist()
        # An identical picture stored twice may come first in its place, with the same score.
        if image_id not in found or scores[0][found.index(image_id)] < scores[0][0] - 1e-5:
            lost.append(image_id)
    if lost:
        raise SelfCheckFailed(f"{len(lost)} of {len(sample)} sampled images did not find themselves first "
                              f"(e.g. image #{lost[0]})")
    return f"{len(sample)} sampled images found themselves first; {len(stored)} vectors match the database"


def _purge_vectors_other_than(target: Generation) -> int:
    identity = target.identity
    total = 0
    while ids := list(Embedding.objects.other_than(identity).values_list("id", flat=True)[:2000]):
        total += Embedding.objects.filter(id__in=ids).delete()[0]
    return total


def _discard(target: Generation) -> None:
    """Leave the current generation as it was: drop the unfinished index and its vectors."""
    shutil.rmtree(_partial_store(target).root, ignore_errors=True)
    if generations.active().name != target.name:
        target.store.remove()
        if target.identity != runtime.index_identity():
            Embedding.objects.of(target.identity).delete()
