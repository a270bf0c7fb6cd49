"""The HNSW index and its snapshots, without Django."""
import json
import multiprocessing

import numpy as np
import pytest

from core.identity import IndexIdentity
from core.index import (
    HnswIndex,
    HnswParams,
    IndexMismatch,
    SnapshotCorrupt,
    SnapshotStore,
    exact_search,
    stacked,
)
from tests.snapshot_stores import damage, published_ids, write_pointer

IDENTITY = IndexIdentity("test-backbone", "v1", 16)
PARAMS = HnswParams(m=8, ef_construction=64, ef_search=32)


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def filled_index(n: int = 50, capacity: int = 16) -> tuple[HnswIndex, np.ndarray, np.ndarray]:
    ids = np.arange(100, 100 + n, dtype=np.int64)
    vectors = unit_vectors(n)
    index = HnswIndex(IDENTITY, PARAMS, capacity=capacity)
    index.upsert(ids, vectors)
    return index, ids, vectors


class TestHnswIndex:
    def test_it_finds_each_vector_as_its_own_nearest_neighbour(self):
        index, ids, vectors = filled_index()
        labels, scores = index.search(vectors, k=1)
        assert labels[:, 0].tolist() == ids.tolist()
        assert np.allclose(scores[:, 0], 1.0, atol=1e-5)

    def test_it_grows_past_its_initial_capacity(self):
        index, ids, _ = filled_index(n=200, capacity=16)
        assert index.count == 200
        assert index.capacity >= 200
        assert index.ids() == set(ids.tolist())

    def test_it_replaces_the_vector_of_an_id_added_again(self):
        index, ids, vectors = filled_index()
        index.upsert(ids[:1], vectors[1:2])
        labels, _ = index.search(vectors[1:2], k=2)
        assert set(labels[0].tolist()) == {ids[0], ids[1]}
        assert index.count == len(ids)

    def test_it_never_returns_a_removed_id(self):
        index, ids, vectors = filled_index()
        index.remove([int(ids[0]), int(ids[0]), 999_999])
        labels, _ = index.search(vectors[:1], k=10)
        assert ids[0] not in labels[0]
        assert index.count == len(ids) - 1
        assert index.deleted_count == 1

    def test_it_brings_back_a_removed_id_added_again(self):
        index, ids, vectors = filled_index()
        index.remove([int(ids[3])])
        index.upsert(ids[3:4], vectors[3:4])
        assert index.search(vectors[3:4], k=1)[0][0, 0] == ids[3]
        assert index.deleted_count == 0

    def test_it_returns_what_exists_when_asked_for_more(self):
        index, ids, vectors = filled_index(n=5)
        labels, scores = index.search(vectors[:1], k=100)
        assert sorted(labels[0].tolist()) == sorted(ids.tolist())
        assert list(scores[0]) == sorted(scores[0], reverse=True)

    def test_an_empty_index_returns_nothing(self):
        labels, scores = HnswIndex(IDENTITY, PARAMS).search(unit_vectors(2), k=10)
        assert labels.shape == (2, 0)
        assert scores.shape == (2, 0)

    def test_it_refuses_vectors_of_another_dimension(self):
        index = HnswIndex(IDENTITY, PARAMS)
        with pytest.raises(IndexMismatch):
            index.upsert(np.array([1]), unit_vectors(1, dim=8))


class TestSnapshotStore:
    """On a local folder and on the S3 gateway (see tests/search/conftest.py)."""

    def test_it_publishes_and_loads_an_identical_index(self, make_store):
        index, ids, vectors = filled_index()
        index.remove([int(ids[0])])
        store = make_store()
        meta = store.publish(index, applied_seq=42)
        assert store.read_meta() == meta
        assert (meta.applied_seq, meta.count, meta.deleted, meta.dim) == (42, len(ids) - 1, 1, 16)
        elsewhere = make_store(host="b")
        assert elsewhere.read_meta() == meta
        loaded = elsewhere.load(meta, PARAMS)
        assert loaded.ids() == index.ids()
        assert loaded.deleted_count == 1
        assert loaded.search(vectors[1:2], k=1)[0][0, 0] == ids[1]

    def test_it_reads_no_meta_before_the_first_snapshot(self, make_store):
        assert make_store().read_meta() is None

    def test_it_keeps_the_previous_snapshot_and_prunes_older_ones(self, make_store):
        store = make_store()
        index, _, _ = filled_index()
        metas = [store.publish(index, applied_seq=seq) for seq in (1, 2, 3, 4)]
        assert published_ids(store) == sorted(m.snapshot_id for m in metas[-2:])

    def test_it_detects_a_corrupted_index_file(self, make_store):
        store = make_store()
        meta = store.publish(filled_index()[0], applied_seq=1)
        path = store.root / meta.snapshot_id / "index.hnsw"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damage(store, meta.snapshot_id, data=bytes(data))
        with pytest.raises(SnapshotCorrupt, match="checksum"):
            make_store(host="b").load(meta, PARAMS)

    def test_it_detects_a_truncated_index_file(self, make_store):
        store = make_store()
        meta = store.publish(filled_index()[0], applied_seq=1)
        damage(store, meta.snapshot_id, data=(store.root / meta.snapshot_id / "index.hnsw").read_bytes()[:100])
        with pytest.raises(SnapshotCorrupt):
            make_store(host="b").load(meta, PARAMS)

    def test_it_detects_a_missing_index_file(self, make_store):
        store = make_store()
        meta = store.publish(filled_index()[0], applied_seq=1)
        damage(store, meta.snapshot_id, data=None)
        with pytest.raises(SnapshotCorrupt, match="missing"):
            make_store(host="b").load(meta, PARAMS)

    @pytest.mark.parametrize("content", ["", "{not json", "[]", json.dumps({"format_version": 99}),
                                         json.dumps({"format_version": 1, "unexpected": True})])
    def test_it_reports_unreadable_metadata_as_corrupt(self, make_store, content):
        write_pointer(make_store(), content)
        with pytest.raises(SnapshotCorrupt):
            make_store().read_meta()

    def test_a_failed_publish_leaves_the_previous_snapshot_current(self, make_store):
        store = make_store()
        index, _, _ = filled_index()
        before = store.publish(index, applied_seq=1)

        class Exploding(HnswIndex):
            def save_to(self, folder):
                (folder / "index.hnsw").write_bytes(b"half")
                raise OSError("disk full")

        broken = Exploding(IDENTITY, PARAMS)
        with pytest.raises(OSError, match="disk full"):
            store.publish(broken, applied_seq=2)
        assert store.read_meta() == before
        assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
        make_store(host="b").load(before, PARAMS)

    def test_a_staging_folder_left_by_a_killed_writer_is_cleared_by_the_next_publish(self, tmp_path):
        store = SnapshotStore(tmp_path)
        (tmp_path / ".000000000007-deadbeef.tmp").mkdir()
        (tmp_path / ".000000000007-deadbeef.tmp" / "index.hnsw").write_bytes(b"half")
        (tmp_path / ".CURRENT.json.000000000007-deadbeef.tmp").write_text("{")
        meta = store.publish(filled_index()[0], applied_seq=8)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["CURRENT.json", meta.snapshot_id])

    def test_the_pointer_signature_changes_with_each_publish(self, make_store):
        store = make_store()
        assert store.pointer_signature() is None
        store.publish(filled_index()[0], applied_seq=1)
        first = store.pointer_signature()
        store.publish(filled_index()[0], applied_seq=2)
        assert store.pointer_signature() != first


def _hold_lock(root, started, release):
    with SnapshotStore(root).writer_lock() as held:
        started.put(held)
        release.get(timeout=30)


class TestWriterLock:
    def test_only_one_process_holds_the_writer_lock(self, tmp_path):
        ctx = multiprocessing.get_context("spawn")
        started, release = ctx.Queue(), ctx.Queue()
        holder = ctx.Process(target=_hold_lock, args=(tmp_path, started, release))
        holder.start()
        try:
            assert started.get(timeout=30) is True
            with SnapshotStore(tmp_path).writer_lock() as held:
                assert held is False
        finally:
            release.put(True)
            holder.join(30)
        with SnapshotStore(tmp_path).writer_lock() as held:
            assert held is True


def test_exact_search_ranks_by_inner_product():
    vectors = unit_vectors(20)
    ids = np.arange(20, dtype=np.int64) * 10
    labels, scores = exact_search(vectors[[3, 7]], ids, vectors, k=3)
    assert labels[:, 0].tolist() == [30, 70]
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert exact_search(vectors[:1], ids[:0], vectors[:0], k=5)[0].shape == (1, 0)


def test_stacked_keeps_ids_and_rows_in_step_and_gives_an_empty_matrix_of_the_right_width():
    vectors = {7: np.full(4, 7.0, dtype=np.float32), 3: np.full(4, 3.0, dtype=np.float32)}
    ids, matrix = stacked(vectors, 4)
    assert ids.dtype == np.int64 and ids.tolist() == [7, 3]
    assert matrix.dtype == np.float32 and matrix[:, 0].tolist() == [7.0, 3.0]
    ids, matrix = stacked({}, 4)
    assert ids.shape == (0,) and matrix.shape == (0, 4) and matrix.dtype == np.float32
