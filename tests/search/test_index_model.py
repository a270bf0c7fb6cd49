"""Stateful property tests: the index layer (writer index, snapshots, reader) against a plain
model, and the whole site's embeds interleaved with reindexes."""
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from core.index import HnswIndex, SnapshotCorrupt, SnapshotStore
from core.reader import IndexReader, resolve_changes
from gallery.models import Image
from gallery.services import image_delete
from jobs import services as job_services
from jobs.models import Job
from search import generations, index_writer, reindex, runtime, selectors, services
from search.models import Embedding, IndexChange
from tests import images
from tests.conftest import empty_index_folder, store
from tests.core.test_index import IDENTITY, PARAMS
from tests.core.test_reader import MemorySource
from tests.search.test_reindex import second_backbone  # noqa: F401  (a fixture the test below uses)

image_ids = st.integers(1, 8)


class IndexLayer(RuleBasedStateMachine):
    """The model: which images have a vector (``source.rows``, the database) and which are hidden.

    The system: one writer applying the change log to its in-memory index and publishing
    snapshots, and a reader that loads them and searches the newer log rows exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="index-model-"))
        self.store = SnapshotStore(self.folder)
        self.source = MemorySource()
        self.hidden: set[int] = set()
        self.rng = np.random.default_rng(0)
        self.writer: HnswIndex | None = None
        self.applied = 0
        self.unusable: list[str] = []
        self.reader = self._new_reader()

    def _new_reader(self) -> IndexReader:
        return IndexReader(self.store, IDENTITY, PARAMS, self.source, on_unusable_snapshot=self.unusable.append)

    def _vector(self) -> np.ndarray:
        vector = self.rng.normal(size=IDENTITY.dim).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def _visible(self, ids: set[int]) -> set[int]:
        return ids - self.hidden

    def _live_visible(self) -> set[int]:
        return set(self.source.rows) - self.hidden

    def _rebuild(self) -> None:
        self.writer = HnswIndex(IDENTITY, PARAMS, capacity=16)
        if self.source.rows:
            ids = np.fromiter(self.source.rows, dtype=np.int64)
            self.writer.upsert(ids, np.stack([self.source.rows[i] for i in ids]))
        self.applied = len(self.source.log)

    # Changes to the database -----------------------------------------------------------------

    @rule(image_id=image_ids)
    def add_or_replace(self, image_id: int) -> None:
        self.source.add(image_id, self._vector())

    @rule(image_id=image_ids)
    def delete(self, image_id: int) -> None:
        self.source.remove(image_id)

    @rule(image_id=image_ids)
    def hide(self, image_id: int) -> None:
        self.hidden.add(image_id)

    @rule(image_id=image_ids)
    def unhide(self, image_id: int) -> None:
        self.hidden.discard(image_id)

    # The writer -------------------------------------------------------------------------------

    @rule()
    def sync_and_publish(self) -> None:
        """What ``index_sync`` does: reuse the index in memory, else load the snapshot, else rebuild."""
        if self.writer is None:
            meta = self._readable_meta()
            try:
                self.writer = self.store.load(meta, PARAMS) if meta else None
                self.applied = meta.applied_seq if meta else 0
            except SnapshotCorrupt:
                self.writer = None
            if self.writer is None:
                self._rebuild()
        assert self.writer is not None
        changes = self.source.changes_after(self.applied)
        if changes:
            fresh, gone = resolve_changes(changes, self.source)
            if fresh:
                self.writer.upsert(np.fromiter(fresh, dtype=np.int64), np.stack(list(fresh.values())))
            self.writer.remove(gone)
            self.applied = changes[-1].seq
        meta = self.store.publish(self.writer, applied_seq=self.applied)
        assert meta.count == len(self.source.rows)
        assert self.writer.ids() == set(self.source.rows)

    def _readable_meta(self):
        try:
            return self.store.read_meta()
        except SnapshotCorrupt:
            return None

    @rule()
    def rebuild_and_publish(self) -> None:
        self._rebuild()
        assert self.writer is not None
        meta = self.store.publish(self.writer, applied_seq=self.applied)
        assert meta.count == len(self.source.rows)

    @rule()
    def restart_writer(self) -> None:
        self.writer = None

    @precondition(lambda self: self.store.pointer.exists())
    @rule(data=st.data())
    def corrupt_snapshot(self, data: st.DataObject) -> None:
        meta = self.store.read_meta()
        assert meta is not None, "the pointer names a snapshot"
        path = self.folder / meta.snapshot_id / data.draw(st.sampled_from(sorted(meta.files)))
        content = bytearray(path.read_bytes())
        if data.draw(st.booleans()) or not content:
            path.write_bytes(bytes(content[: len(content) // 2]))
        else:
            content[data.draw(st.integers(0, len(content) - 1))] ^= 0xFF
            path.write_bytes(bytes(content))
        self.writer = None  # as after a crash: the next writer must read the snapshot from disk

    # The reader -------------------------------------------------------------------------------

    @rule()
    def restart_reader(self) -> None:
        reports = len(self.unusable)
        self.reader = self._new_reader()
        self.reader.refresh()
        meta = self._readable_meta()
        try:
            usable = meta is not None and self.store.load(meta, PARAMS) is not None
        except SnapshotCorrupt:
            usable = False
        if usable:
            assert self.reader.meta == meta
        else:
            # A damaged snapshot is never searched: the reader falls back to the database rows, and says so.
            assert self.reader.meta is None
            assert len(self.unusable) == reports + (meta is not None)

    # What must always hold --------------------------------------------------------------------

    @invariant()
    def every_live_visible_image_is_its_own_nearest_neighbour(self) -> None:
        for image_id in self._live_visible():
            vector = self.source.rows[image_id]
            [hits] = self.reader.search(vector[None, :], 1, visible=self._visible)
            assert [h.image_id for h in hits] == [image_id]
            assert hits[0].score > 0.999

    @invariant()
    def a_full_search_returns_exactly_the_live_visible_images_once(self) -> None:
        query = self._vector()[None, :]
        [hits] = self.reader.search(query, len(self.source.rows) + 5, visible=self._visible)
        returned = [h.image_id for h in hits]
        assert len(returned) == len(set(returned))
        assert set(returned) == self._live_visible()

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


IndexLayer.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None, database=None)
test_the_index_layer_matches_its_model = IndexLayer.TestCase


class EmbedsAcrossReindexes(RuleBasedStateMachine):
    """The site as a whole, with the database, the models and the index writer all real: uploads
    and embeds interleaved with reindexes that switch generations (to the other backbone, or to
    new HNSW parameters) and with reindexes cancelled midway. Each race is forced by running the
    other side at a hooked moment of the first, as a second process could."""

    def __init__(self) -> None:
        super().__init__()
        Image.objects.all().delete()
        IndexChange.objects.all().delete()
        Job.objects.all().delete()
        empty_index_folder()
        self.seed = 0

    @initialize()
    def a_gallery_and_an_upload(self) -> None:
        gallery = [self._upload() for _ in range(2)]
        self._embed(gallery[0].pk)
        self._upload()

    def _upload(self) -> Image:
        self.seed += 1
        return store(images.jpeg(200 + self.seed), f"upload-{self.seed}.jpg")

    def _queued(self) -> list[int]:
        return list(Image.objects.filter(state=Image.State.QUEUED).order_by("id").values_list("id", flat=True))

    def _embed(self, image_id: int) -> None:
        services.image_embed(image_id=image_id, claim_token=uuid.uuid4().hex)

    @staticmethod
    def _reindex(other_backbone: bool) -> Job:
        current = generations.active()
        if other_backbone:
            return reindex.reindex_start(backbone=OTHER_BACKBONE[current.backbone])
        return reindex.reindex_start(backbone=current.backbone, m=24 if current.m == 16 else 16)

    # Uploads and embeds -----------------------------------------------------------------------

    @precondition(lambda self: Image.objects.count() < 6)
    @rule()
    def upload(self) -> None:
        self._upload()

    @precondition(lambda self: self._queued())
    @rule(data=st.data())
    def embed(self, data: st.DataObject) -> None:
        self._embed(data.draw(st.sampled_from(self._queued())))

    @precondition(lambda self: Image.objects.exists())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        image_id = data.draw(st.sampled_from(list(Image.objects.values_list("id", flat=True))))
        image_delete(image=Image.objects.get(pk=image_id))

    # Generation switches and cancels, interleaved with embeds ---------------------------------

    @rule(other_backbone=st.booleans())
    def switch_generation(self, other_backbone: bool) -> None:
        job = run_job(self._reindex(other_backbone))
        assert job.state == Job.State.SUCCEEDED, job.last_error

    @precondition(lambda self: self._queued())
    @rule(data=st.data(), other_backbone=st.booleans())
    def embed_across_a_switch(self, data: st.DataObject, other_backbone: bool) -> None:
        """The batch embeds with the old generation's model; a whole reindex succeeds before it commits."""
        image_id = data.draw(st.sampled_from(self._queued()))
        original_embed = services.images_embed_with
        jobs: list[Job] = []

        def switch_after_the_embed(*, embedder, images):
            described = original_embed(embedder=embedder, images=images)
            if not jobs:
                jobs.append(run_job(self._reindex(other_backbone)))
            return described

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(services, "images_embed_with", switch_after_the_embed)
            self._embed(image_id)
        assert jobs[0].state == Job.State.SUCCEEDED, jobs[0].last_error

    @rule(moment=st.sampled_from(["_build", "_catch_up", "_self_check", "_purge_vectors_other_than"]),
          cancel=st.booleans(), upload=st.booleans())
    def embed_during_a_reindex(self, moment: str, cancel: bool, upload: bool) -> None:
        """A reindex to the other backbone; at ``moment`` an upload is embedded (with both backbones
        while the reindex builds) and, with ``cancel``, the reindex is cancelled first."""
        job = self._reindex(other_backbone=True)
        original = getattr(reindex, moment)

        def interleave(*args, **kwargs):
            if cancel:
                job_services.job_cancel(job=Job.objects.get(pk=job.pk))
            queued = [self._upload().pk] if upload else self._queued()
            if queued:
                self._embed(queued[0])
            return original(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reindex, moment, interleave)
            job = run_job(job)
        assert job.state in (Job.State.SUCCEEDED, Job.State.CANCELLED), job.last_error

    @precondition(lambda self: self._queued())
    @rule(data=st.data())
    def embed_while_a_reindex_is_cancelled(self, data: st.DataObject) -> None:
        """The batch reads the reindex target, then the reindex is cancelled before it commits."""
        image_id = data.draw(st.sampled_from(self._queued()))
        job = self._reindex(other_backbone=True)
        original_embed = services.images_embed_with

        def cancel_after_the_second_backbone(*, embedder, images):
            described = original_embed(embedder=embedder, images=images)
            if embedder.backbone.name != generations.active().backbone:
                job_services.job_cancel(job=Job.objects.get(pk=job.pk))
            return described

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(services, "images_embed_with", cancel_after_the_second_backbone)
            self._embed(image_id)

    @rule()
    def upkeep(self) -> None:
        services.embeddings_purge_stray()
        index_writer.index_repair()
        services.images_requeue_unembedded()

    # What must hold after every step ----------------------------------------------------------

    @invariant()
    def every_indexed_image_has_exactly_one_vector_of_the_active_identity_of_its_length(self) -> None:
        identity = runtime.index_identity()
        indexed = set(Image.objects.filter(state=Image.State.INDEXED).values_list("id", flat=True))
        rows = list(Embedding.objects.of(identity).values_list("image_id", "dim", "vector"))
        assert sorted(image_id for image_id, _, _ in rows) == sorted(indexed)
        assert all(dim == identity.dim and len(vector) == 4 * identity.dim for _, dim, vector in rows)

    @invariant()
    def the_published_index_equals_the_database_and_search_answers(self) -> None:
        result = index_writer.index_sync()
        assert result.status in ("published", "up_to_date"), result
        assert result.meta is not None, "a published or up-to-date index has a snapshot"
        active = generations.active()
        stored = set(Embedding.objects.of(active.identity).values_list("image_id", flat=True))
        assert active.store.load(result.meta, active.params).ids() == stored
        query = np.ones((1, active.identity.dim), dtype=np.float32) / np.sqrt(active.identity.dim)
        [hits] = selectors.similar_to_vectors(query, k=len(stored) + 5)
        assert {hit.image.pk for hit in hits} == stored


OTHER_BACKBONE = {"efficientnet_lite0": "resnet50", "resnet50": "efficientnet_lite0"}


def run_job(job: Job) -> Job:
    job.refresh_from_db()
    if job.state == Job.State.QUEUED:
        job_services.job_execute(job_id=job.pk, token=job.claim_token)
        job.refresh_from_db()
    return job


@pytest.mark.usefixtures("second_backbone")
def test_embeds_across_reindexes_keep_one_vector_per_indexed_image_of_the_model_in_use(db, clean_index, settings):
    settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
    run_state_machine_as_test(EmbedsAcrossReindexes, settings=settings_for_the_site)


# Derandomized: each run tries the same interleavings, so a failure is one that repeats. Not
# shrunk: each step embeds or reindexes, and shrinking a failure would outlast the test timeout.
settings_for_the_site = settings(max_examples=6, stateful_step_count=5, deadline=None, database=None,
                                 derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
