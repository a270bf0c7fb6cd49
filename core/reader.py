"""Searching a snapshot plus the newest rows that no snapshot holds yet. Free of Django.

A reader keeps one loaded snapshot (reloaded when ``CURRENT.json`` changes) and a "tail":
the vectors added or removed by changes after the snapshot's ``applied_seq``, fetched from the
database through a ``ChangeSource``. Each query searches both, so a freshly indexed image is
found by every process as soon as its row is committed. Results are then filtered by the
caller's ``visible`` function, over-fetching until enough remain, so that a deleted or hidden
image disappears from results at once, before the writer has removed it from the index.

A newer snapshot that cannot be had (the object store is unreachable, or it is damaged) is
logged and the reader goes on with the one it has: the tail keeps its results current.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.identity import IndexIdentity
from core.index import (
    HnswIndex,
    HnswParams,
    IndexMismatch,
    SnapshotCorrupt,
    SnapshotMeta,
    Snapshots,
    SnapshotUnavailable,
    exact_search,
    stacked,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    seq: int
    image_id: int
    removed: bool


class ChangeSource(Protocol):
    def changes_after(self, seq: int, limit: int | None = None) -> list[Change]:
        """Changes with a sequence number above ``seq``, in order; the first ``limit`` of them."""

    def vectors(self, image_ids: Collection[int]) -> dict[int, np.ndarray]:
        """The current vectors of these images, for the reader's identity; absent ids are skipped."""


def resolve_changes(changes: list[Change], source: ChangeSource) -> tuple[dict[int, np.ndarray], set[int]]:
    """The current vector of every image these changes touch, and the images left without one
    (removed, or whose vector is gone again already). Replaying them in any order is safe."""
    removed_last = {c.image_id: c.removed for c in changes}
    fresh = source.vectors([i for i, removed in removed_last.items() if not removed])
    return fresh, set(removed_last) - set(fresh)


@dataclass(frozen=True)
class Hit:
    image_id: int
    score: float


class IndexReader:
    """Answers nearest-neighbour queries for one process. Safe to share between threads."""

    def __init__(self, store: Snapshots, identity: IndexIdentity, params: HnswParams,
                 source: ChangeSource, *, on_unusable_snapshot: Callable[[str], None] | None = None,
                 load_in_background: bool = False) -> None:
        self.store = store
        # A web process: a newer snapshot is downloaded and loaded by a thread of its own while every
        # search goes on with the snapshot in use plus the tail, so that no search waits for the
        # seconds a large snapshot takes. Without it, the search that notices the snapshot loads it.
        self.load_in_background = load_in_background
        self.identity = identity
        self.params = params
        self.source = source
        self.on_unusable_snapshot = on_unusable_snapshot
        self._lock = threading.Lock()
        # Held while a snapshot is read (and downloaded): not ``_lock``, so that the other threads
        # go on searching the snapshot in use meanwhile.
        self._loading = threading.Lock()
        self._signature: str | None = None
        self._index: HnswIndex | None = None
        self.meta: SnapshotMeta | None = None
        self._tail_seq = 0
        self._tail: dict[int, np.ndarray] = {}
        self._removed: set[int] = set()
        self._tail_matrix: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def tail_size(self) -> int:
        return len(self._tail)

    def refresh(self) -> None:
        """Load a newer snapshot if one was published, then read the changes after it."""
        signature = self.store.pointer_signature()
        # One thread loads; the others wait for it only when there is no snapshot in use yet.
        if signature != self._signature and self._loading.acquire(blocking=self._index is None):
            if self.load_in_background and self._index is not None:
                threading.Thread(target=self._load_in_background, args=(signature,), name="index-snapshot-load",
                                 daemon=True).start()
            else:
                self._load_then_release(signature)
        with self._lock:
            self._read_changes()

    def _load_then_release(self, signature: str | None) -> None:
        try:
            if signature != self._signature:
                self._load_snapshot(signature)
        finally:
            self._loading.release()

    def _load_in_background(self, signature: str | None) -> None:
        try:
            self._load_then_release(signature)
        except Exception:
            # Nobody waits on this thread to see it; searches go on with the snapshot in use.
            log.exception("Could not load the index snapshot; keeping the one in use")

    def _load_snapshot(self, signature: str | None) -> None:
        try:
            meta = self.store.read_meta()
            if meta is not None and meta.identity != self.identity:
                # Never compared with this site's vectors: the writer rebuilds it from the database.
                raise IndexMismatch(f"{self.store.root} holds {meta.identity.describe()} vectors, "
                                    f"not {self.identity.describe()}")
            index = self.store.load(meta, self.params) if meta else None
        except SnapshotUnavailable as exc:
            # The signature stays the old one, so that the next poll tries again.
            log.warning("Keeping the index snapshot in use: %s", exc)
            return
        except (SnapshotCorrupt, IndexMismatch) as exc:
            if self.store.pointer_signature() != signature:
                # A newer snapshot replaced this one while it was being read; take that one.
                return self._load_snapshot(self.store.pointer_signature())
            self._signature = signature
            if self._index is not None and self.meta is not None:
                log.error("Keeping index snapshot %s: the newer one is unusable: %s", self.meta.snapshot_id, exc)
            else:
                with self._lock:
                    self._use_snapshot(None, None)
                log.error("Ignoring the index snapshot and searching the database rows instead: %s", exc)
            if self.on_unusable_snapshot:
                self.on_unusable_snapshot(str(exc))
            return
        with self._lock:
            self._signature = signature
            self._use_snapshot(meta, index)

    def _use_snapshot(self, meta: SnapshotMeta | None, index: HnswIndex | None) -> None:
        self.meta, self._index = meta, index
        self._tail_seq = meta.applied_seq if meta else 0
        self._tail = {}
        self._removed = set()
        self._tail_matrix = None

    def _read_changes(self) -> None:
        changes = self.source.changes_after(self._tail_seq)
        if not changes:
            return
        # The snapshot's copy of every changed image is superseded: by the tail's vector, or by
        # nothing.
        fresh, gone = resolve_changes(changes, self.source)
        self._tail.update(fresh)
        self._removed -= fresh.keys()
        for image_id in gone:
            self._tail.pop(image_id, None)
        self._removed |= gone
        self._tail_seq = changes[-1].seq
        self._tail_matrix = None

    def _tail_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tail_matrix is None:
            self._tail_matrix = stacked(self._tail, self.identity.dim)
        return self._tail_matrix

    @property
    def total(self) -> int:
        return (self._index.count if self._index else 0) + len(self._tail)

    def search(self, queries: np.ndarray, k: int, *, visible: Callable[[set[int]], set[int]],
               exclude: Sequence[Collection[int]] | None = None) -> list[list[Hit]]:
        """The k best visible images for each query, best first.

        ``visible`` receives candidate ids and returns those that may be shown. ``exclude`` gives,
        per query, ids to leave out (the query image itself, when searching from a gallery image).
        """
        if queries.ndim != 2 or queries.shape[1] != self.identity.dim:
            raise IndexMismatch(f"a query of shape {queries.shape} does not fit {self.identity.describe()}")
        self.refresh()
        with self._lock:
            index, tail_ids, tail_vectors = self._index, *self._tail_arrays()
            removed = self._removed | set(self._tail)
            total = self.total
        results = []
        for row, query in enumerate(queries):
            skip = set(exclude[row]) if exclude else set()
            results.append(self._search_one(query[None, :], k, index, tail_ids, tail_vectors, removed, skip,
                                            total, visible))
        return results

    def _search_one(self, query: np.ndarray, k: int, index: HnswIndex | None, tail_ids: np.ndarray,
                    tail_vectors: np.ndarray, superseded: set[int], skip: set[int], total: int,
                    visible: Callable[[set[int]], set[int]]) -> list[Hit]:
        fetch = k + len(skip) + 8
        while True:
            scored: dict[int, float] = {}
            if index is not None:
                labels, scores = index.search(query, fetch + len(superseded))
                for image_id, score in zip(labels[0].tolist(), scores[0].tolist(), strict=True):
                    if image_id not in superseded:
                        scored[image_id] = score
            labels, scores = exact_search(query, tail_ids, tail_vectors, fetch)
            scored.update(zip(labels[0].tolist(), scores[0].tolist(), strict=True))
            for image_id in skip:
                scored.pop(image_id, None)
            shown = visible(set(scored))
            hits = sorted((Hit(i, s) for i, s in scored.items() if i in shown), key=lambda h: -h.score)
            if len(hits) >= k or fetch >= total:
                return hits[:k]
            fetch = min(total, fetch * 2)
