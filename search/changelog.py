"""Appending to and reading the index change log (``IndexChange``)."""
from __future__ import annotations

import logging
import zlib
from collections.abc import Collection, Iterable

import numpy as np
from django.db import connection

from core.identity import IndexIdentity
from core.reader import Change
from search.models import Embedding, IndexChange

log = logging.getLogger(__name__)

# Any constant works; it names the PostgreSQL advisory lock that orders appends.
_APPEND_LOCK_KEY = zlib.crc32(b"lookalike.index_change_log")


def record_changes(*, image_ids: Iterable[int], kind: IndexChange.Kind) -> None:
    """Log that these images' vectors changed. Call as the last write of the transaction.

    Appends are serialised until commit, so that sequence numbers become visible in order: a
    reader that has seen ``seq`` can never later find a smaller one appear. SQLite already runs
    one writing transaction at a time.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_changes must run inside the transaction that made the change")
    rows = [IndexChange(image_id=image_id, kind=kind) for image_id in image_ids]
    if not rows:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_APPEND_LOCK_KEY])
    IndexChange.objects.bulk_create(rows)


def last_seq() -> int:
    return IndexChange.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def vectors_for(identity: IndexIdentity, image_ids: Collection[int] | None = None) -> dict[int, np.ndarray]:
    """The stored vectors of one backbone and version, for these images or for all of them."""
    rows = Embedding.objects.of(identity)
    if image_ids is not None:
        rows = rows.filter(image_id__in=list(image_ids))
    return decode_vectors(identity, rows.values_list("image_id", "vector").iterator(chunk_size=2000))


def decode_vectors(identity: IndexIdentity, rows: Iterable[tuple[int, bytes | memoryview]]) -> dict[int, np.ndarray]:
    """Stored vectors as arrays, leaving out (and logging) any whose length is not the identity's
    dimension: one bad row must not fail every search and every index update."""
    size = identity.dim * np.dtype(np.float32).itemsize
    vectors = {}
    for image_id, vector in rows:
        if len(vector) != size:
            log.error("Skipping the vector of image #%d: %d bytes, where %s takes %d; embed the image again",
                      image_id, len(vector), identity.describe(), size)
            continue
        vectors[image_id] = np.frombuffer(bytes(vector), dtype=np.float32)
    return vectors


class DatabaseChangeSource:
    """The ``ChangeSource`` that readers use: the change log and vectors in the database."""

    def __init__(self, identity: IndexIdentity) -> None:
        self.identity = identity

    def changes_after(self, seq: int, limit: int | None = None) -> list[Change]:
        rows = IndexChange.objects.filter(seq__gt=seq).order_by("seq").values_list("seq", "image_id", "kind")
        return [Change(s, image_id, kind == IndexChange.Kind.REMOVE) for s, image_id, kind in rows[:limit]]

    def vectors(self, image_ids: Collection[int]) -> dict[int, np.ndarray]:
        return vectors_for(self.identity, image_ids) if image_ids else {}


