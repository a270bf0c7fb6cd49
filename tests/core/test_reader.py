"""Searching a snapshot plus the rows no snapshot holds yet, without Django."""
import numpy as np
import pytest

from core.identity import IndexIdentity
from core.index import HnswIndex, IndexMismatch, Snapshots
from core.reader import Change, IndexReader
from tests.core.test_index import IDENTITY, PARAMS, unit_vectors
from tests.snapshot_stores import damage


class MemorySource:
    """A change log and vector table kept in memory, standing in for the database."""

    def __init__(self) -> None:
        self.log: list[Change] = []
        self.rows: dict[int, np.ndarray] = {}

    def add(self, image_id: int, vector: np.ndarray) -> None:
        self.rows[image_id] = vector
        self.log.append(Change(len(self.log) + 1, image_id, removed=False))

    def add_all(self, vectors: np.ndarray) -> None:
        """Add the vectors as images 1, 2, 3, ..."""
        for image_id, vector in enumerate(vectors, start=1):
            self.add(image_id, vector)

    def remove(self, image_id: int) -> None:
        self.rows.pop(image_id, None)
        self.log.append(Change(len(self.log) + 1, image_id, removed=True))

    def changes_after(self, seq: int, limit: int | None = None) -> list[Change]:
        return [c for c in self.log if c.seq > seq][:limit]

    def vectors(self, image_ids):
        return {i: self.rows[i] for i in image_ids if i in self.rows}

    def publish(self, store: Snapshots) -> None:
        index = HnswIndex(IDENTITY, PARAMS)
        ids = np.fromiter(self.rows, dtype=np.int64)
        index.upsert(ids, np.stack([self.rows[i] for i in ids]))
        store.publish(index, applied_seq=len(self.log))


def everything(ids: set[int]) -> set[int]:
    return ids


@pytest.fixture
def setup(make_store):
    """The change source, the writer's store, and a reader (on another host, on the gateway)."""
    source = MemorySource()
    reader = IndexReader(make_store(host="reader"), IDENTITY, PARAMS, source)
    return source, make_store(), reader


def top_ids(reader, vector, k=1, **kwargs):
    return [hit.image_id for hit in reader.search(vector[None, :], k, visible=everything, **kwargs)[0]]


def test_it_finds_rows_before_any_snapshot_exists(setup):
    source, _, reader = setup
    vectors = unit_vectors(10)
    source.add_all(vectors)
    assert top_ids(reader, vectors[4]) == [5]
    assert reader.meta is None


def test_it_covers_rows_added_after_the_snapshot(setup):
    source, store, reader = setup
    vectors = unit_vectors(20)
    source.add_all(vectors[:10])
    source.publish(store)
    source.add(11, vectors[10])
    assert top_ids(reader, vectors[10]) == [11]
    assert top_ids(reader, vectors[2]) == [3]
    assert reader.meta.applied_seq == 10
    assert reader.tail_size == 1


def test_a_removal_after_the_snapshot_hides_the_image_at_once(setup):
    source, store, reader = setup
    vectors = unit_vectors(10)
    source.add_all(vectors)
    source.publish(store)
    source.remove(4)
    assert 4 not in top_ids(reader, vectors[3], k=10)


def test_a_vector_replaced_after_the_snapshot_is_found_by_its_new_value_only(setup):
    source, store, reader = setup
    vectors = unit_vectors(12)
    source.add_all(vectors[:10])
    source.publish(store)
    source.add(1, vectors[11])
    hits = reader.search(vectors[11][None, :], 10, visible=everything)[0]
    assert hits[0].image_id == 1
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.image_id for h in hits].count(1) == 1
    assert top_ids(reader, vectors[0]) != [1]


def test_it_loads_a_newer_snapshot_and_drops_the_tail_it_contains(setup):
    source, store, reader = setup
    vectors = unit_vectors(10)
    source.add_all(vectors[:5])
    source.publish(store)
    reader.refresh()
    for image_id in range(5 + 1, 10 + 1):
        source.add(image_id, vectors[image_id - 1])
    reader.refresh()
    assert reader.tail_size == 5
    source.publish(store)
    reader.refresh()
    assert reader.tail_size == 0
    assert reader.meta.applied_seq == 10
    assert top_ids(reader, vectors[9]) == [10]


def test_it_only_returns_what_the_visibility_filter_allows_and_over_fetches(setup):
    source, store, reader = setup
    vectors = unit_vectors(60)
    source.add_all(vectors)
    source.publish(store)
    hidden = set(range(1, 51))
    hits = reader.search(vectors[:1], 5, visible=lambda ids: ids - hidden)[0]
    assert len(hits) == 5
    assert not {h.image_id for h in hits} & hidden


def test_it_leaves_out_excluded_ids_per_query(setup):
    source, _, reader = setup
    vectors = unit_vectors(5)
    source.add_all(vectors)
    assert top_ids(reader, vectors[0], k=1, exclude=[[1]]) != [1]


def test_a_corrupt_snapshot_falls_back_to_the_database_rows_and_reports_it(setup, make_store):
    source, store, _ = setup
    reports = []
    reader = IndexReader(make_store(host="reader"), IDENTITY, PARAMS, source, on_unusable_snapshot=reports.append)
    vectors = unit_vectors(10)
    source.add_all(vectors)
    source.publish(store)
    damage(store, store.read_meta().snapshot_id, data=b"garbage")
    assert top_ids(reader, vectors[6]) == [7]
    assert reader.meta is None
    assert len(reports) == 1
    assert "index.hnsw" in reports[0]
    reader.refresh()
    assert len(reports) == 1, "a corrupt snapshot is reported once, not on every query"


def test_a_snapshot_of_other_vectors_is_never_searched_and_is_reported(setup, make_store):
    source, store, _ = setup
    reports = []
    reader = IndexReader(make_store(host="reader"), IDENTITY, PARAMS, source, on_unusable_snapshot=reports.append)
    vectors = unit_vectors(3)
    source.add_all(vectors[:2])
    other = HnswIndex(IndexIdentity("test-backbone", "v9", 16), PARAMS)
    other.upsert(np.array([99]), vectors[2:3])
    store.publish(other, applied_seq=2)
    assert sorted(top_ids(reader, vectors[2], k=5)) == [1, 2]
    assert reader.meta is None
    assert len(reports) == 1
    assert "v9" in reports[0]


def test_a_query_of_the_wrong_dimension_is_an_error(setup):
    _, _, reader = setup
    with pytest.raises(IndexMismatch):
        reader.search(unit_vectors(1, dim=8), 3, visible=everything)


def test_an_empty_gallery_returns_no_results(setup):
    _, _, reader = setup
    assert reader.search(unit_vectors(2), 10, visible=everything) == [[], []]
