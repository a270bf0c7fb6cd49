"""A stateful property test of the index layer (writer index, snapshots, reader) against a plain model."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from search.index import HnswIndex, SnapshotCorrupt, SnapshotStore
from search.reader import IndexReader, resolve_changes
from tests.search.test_index import IDENTITY, PARAMS
from tests.search.test_reader import MemorySource

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
        meta = self.store.publish(self.writer, applied_seq=self.applied)
        assert meta.count == len(self.source.rows)

    @rule()
    def restart_writer(self) -> None:
        self.writer = None

    @precondition(lambda self: self.store.pointer.exists())
    @rule(data=st.data())
    def corrupt_snapshot(self, data: st.DataObject) -> None:
        meta = self.store.read_meta()
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
