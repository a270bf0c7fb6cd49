"""The HNSW index and its snapshots on disk. Free of Django.

The database holds every vector; an index is a derived copy that can always be rebuilt. One
writer changes an ``HnswIndex`` in memory and publishes it with ``SnapshotStore.publish``:
each snapshot is written to its own folder, fsynced, renamed into place and only then named
in ``CURRENT.json``, which is itself replaced atomically. A reader therefore sees the previous
snapshot or the next one, never a half-written one, and verifies the checksums before use.
hnswlib must not be searched while the same object is being added to, so readers load their
own copy and never share the writer's.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hnswlib
import numpy as np

from search.identity import IndexIdentity

FORMAT_VERSION = 1
_INDEX_FILE = "index.hnsw"
_DELETED_FILE = "deleted.npy"
_POINTER = "CURRENT.json"


class SnapshotCorrupt(RuntimeError):
    """A snapshot on disk is missing, truncated or does not match its checksum."""


class IndexMismatch(ValueError):
    """An index was built for other vectors (backbone, version or dimension) than asked for."""


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 256


class HnswIndex:
    """An hnswlib graph over image ids, with inner-product similarity on unit vectors.

    Capacity doubles when it runs out, so that adding n vectors costs O(n log n) resizes at most.
    """

    def __init__(self, identity: IndexIdentity, params: HnswParams, *, capacity: int = 1024,
                 graph: hnswlib.Index | None = None, deleted: Iterable[int] = ()) -> None:
        self.identity = identity
        self.params = params
        if graph is None:
            graph = hnswlib.Index(space="ip", dim=identity.dim)
            graph.init_index(max_elements=max(capacity, 16), M=params.m, ef_construction=params.ef_construction)
        graph.set_ef(params.ef_search)
        self._graph = graph
        self._deleted = set(deleted)

    @property
    def count(self) -> int:
        """Live vectors, not counting the ones marked deleted."""
        return self._graph.element_count - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        return len(self._deleted)

    @property
    def capacity(self) -> int:
        return self._graph.max_elements

    def ids(self) -> set[int]:
        return set(self._graph.get_ids_list()) - self._deleted

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors, or replace the vectors of ids already present (deleted ones included)."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.identity.dim):
            raise IndexMismatch(f"vectors of shape {vectors.shape} do not fit {self.identity.describe()}")
        needed = self._graph.element_count + len(ids)
        if needed > self._graph.max_elements:
            self._graph.resize_index(max(needed, 2 * self._graph.max_elements))
        self._graph.add_items(vectors, np.asarray(ids, dtype=np.int64), num_threads=1)
        self._deleted.difference_update(int(i) for i in ids)

    def remove(self, ids: Iterable[int]) -> None:
        present = set(self._graph.get_ids_list())
        for image_id in ids:
            if image_id in present and image_id not in self._deleted:
                self._graph.mark_deleted(image_id)
                self._deleted.add(image_id)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and cosine similarities per query, best first; k is capped at the live count."""
        k = min(k, self.count)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        while True:
            try:
                labels, distances = self._graph.knn_query(queries, k=k, num_threads=1)
                return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
            except RuntimeError:
                # hnswlib cannot always gather k results when many elements are marked deleted.
                if k == 1:
                    raise
                k = max(1, k // 2)

    def save_to(self, folder: Path) -> None:
        self._graph.save_index(str(folder / _INDEX_FILE))
        np.save(folder / _DELETED_FILE, np.fromiter(sorted(self._deleted), dtype=np.int64))


@dataclass(frozen=True)
class SnapshotMeta:
    snapshot_id: str
    backbone: str
    backbone_version: str
    dim: int
    m: int
    ef_construction: int
    count: int
    deleted: int
    capacity: int
    # The highest change-log sequence number whose change this snapshot contains.
    applied_seq: int
    created_at: float
    publish_seconds: float
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    space: str = "ip"

    @property
    def identity(self) -> IndexIdentity:
        return IndexIdentity(self.backbone, self.backbone_version, self.dim)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotStore:
    """The folder that holds the published snapshots of one backbone's index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointer = root / _POINTER

    def pointer_signature(self) -> tuple[int, int, int] | None:
        """Changes whenever a new snapshot is published; cheap enough to call on every query."""
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read_meta(self) -> SnapshotMeta | None:
        try:
            raw = self.pointer.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            if data.get("format_version") != FORMAT_VERSION:
                raise SnapshotCorrupt(f"{self.pointer} has format {data.get('format_version')}, "
                                      f"this version reads {FORMAT_VERSION}")
            return SnapshotMeta(**data)
        except (ValueError, TypeError) as exc:
            raise SnapshotCorrupt(f"{self.pointer} is not valid snapshot metadata: {exc}") from exc

    def publish(self, index: HnswIndex, *, applied_seq: int) -> SnapshotMeta:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        snapshot_id = f"{applied_seq:012d}-{uuid.uuid4().hex[:8]}"
        staging = self.root / f".{snapshot_id}.tmp"
        staging.mkdir()
        try:
            index.save_to(staging)
            files: dict[str, dict[str, int | str]] = {}
            for path in sorted(staging.iterdir()):
                _fsync_path(path)
                files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            _fsync_path(staging)
            final = self.root / snapshot_id
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        meta = SnapshotMeta(
            snapshot_id=snapshot_id, backbone=index.identity.backbone,
            backbone_version=index.identity.backbone_version, dim=index.identity.dim, m=index.params.m,
            ef_construction=index.params.ef_construction, count=index.count, deleted=index.deleted_count,
            capacity=index.capacity, applied_seq=applied_seq, created_at=time.time(),
            publish_seconds=round(time.monotonic() - started, 4), files=files,
        )
        tmp_pointer = self.root / f".{_POINTER}.{snapshot_id}.tmp"
        tmp_pointer.write_text(json.dumps(asdict(meta), indent=1))
        _fsync_path(tmp_pointer)
        os.replace(tmp_pointer, self.pointer)
        _fsync_path(self.root)
        self._prune(keep={snapshot_id})
        return meta

    def verify(self, meta: SnapshotMeta) -> None:
        """Raise ``SnapshotCorrupt`` unless every file of the snapshot is there and matches its checksum."""
        folder = self.root / meta.snapshot_id
        for name, expected in meta.files.items():
            path = folder / name
            if not path.exists():
                raise SnapshotCorrupt(f"{path} is missing")
            if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
                raise SnapshotCorrupt(f"{path} does not match its checksum")
        if set(meta.files) != {_INDEX_FILE, _DELETED_FILE}:
            raise SnapshotCorrupt(f"{folder} lists unexpected files {sorted(meta.files)}")

    def load(self, meta: SnapshotMeta, params: HnswParams) -> HnswIndex:
        self.verify(meta)
        folder = self.root / meta.snapshot_id
        graph = hnswlib.Index(space="ip", dim=meta.dim)
        try:
            graph.load_index(str(folder / _INDEX_FILE), max_elements=meta.capacity)
            deleted = np.load(folder / _DELETED_FILE, allow_pickle=False)
        except (RuntimeError, ValueError, OSError) as exc:
            raise SnapshotCorrupt(f"{folder} could not be loaded: {exc}") from exc
        stored = HnswParams(m=meta.m, ef_construction=meta.ef_construction, ef_search=params.ef_search)
        return HnswIndex(meta.identity, stored, graph=graph, deleted=deleted.tolist())

    def _prune(self, keep: set[str]) -> None:
        # A writer killed while publishing leaves its staging folder; the one writer is past that now.
        for stale in self.root.glob(".*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        # The previous snapshot stays for a reader that read CURRENT.json just before it changed.
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime)
        for old in folders[:-2]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def writer_lock(self) -> Iterator[bool]:
        """Yields True to the one process allowed to write, False (at once) to any other."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "writer.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def exact_search(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product, for the rows that no snapshot holds yet."""
    k = min(k, len(ids))
    if k == 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.int64), empty.astype(np.float32)
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return ids[np.take_along_axis(top, order, axis=1)], np.take_along_axis(top_scores, order, axis=1)
