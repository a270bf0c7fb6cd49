"""Copies noticed at upload: when an upload is embedded, its nearest indexed image is looked up in the
index, and if the two are as alike as search calls an edited copy (``search.verdicts``), the upload
is marked as a copy of it and the pair is put up for review on the admin's near-duplicates page.

The lookup runs in the embedding worker with the vectors it has just made, before they are stored,
and the notice is stored in the same transaction that marks the upload indexed: the upload page,
which follows each upload until it is indexed, never misses it, and the upload request itself does
nothing more than before. The uploader is told only when they may see the image it copies.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from django.contrib.auth.models import AnonymousUser, User

from core.identity import IndexIdentity
from gallery import selectors as gallery_selectors
from gallery.models import CopyNotice, DuplicateGroup, Image
from search import runtime, verdicts
from search.duplicates import EXACT_SIMILARITY

# (original id, similarity) per upload found to be a copy
Found = dict[int, tuple[int, float]]
# How many of an upload's nearest images are checked at once for being indexed.
_NEAREST = 4


def copies_find(*, identity: IndexIdentity, vectors: dict[int, np.ndarray]) -> Found:
    """The image each of these freshly embedded images is an edited copy of, if any: its nearest
    indexed image (any owner; who may be told is decided when it is shown), never one of them."""
    reader = runtime.index_reader()
    threshold = verdicts.edited_copy_threshold(identity)
    if threshold is None or not vectors or reader.identity != identity:
        return {}
    ids = list(vectors)
    fresh = set(ids)
    queries = np.stack([vectors[i] for i in ids])
    # The nearest few of each, then one query for which of them all are indexed (one a batch, not
    # one an image); only an image whose few are all not indexed is searched again on its own.
    rows = reader.search(queries, _NEAREST, visible=lambda candidates: candidates - fresh)
    indexed = indexed_apart_from(fresh)({hit.image_id for row in rows for hit in row})
    found: Found = {}
    for position, (image_id, row) in enumerate(zip(ids, rows, strict=True)):
        nearest = next((hit for hit in row if hit.image_id in indexed), None)
        if nearest is None and len(row) == _NEAREST:
            [further] = reader.search(queries[position:position + 1], 1, visible=indexed_apart_from(fresh))
            nearest = further[0] if further else None
        if nearest is not None and nearest.score >= threshold:
            found[image_id] = (nearest.image_id, nearest.score)
    return found


def indexed_apart_from(fresh: set[int]) -> Callable[[set[int]], set[int]]:
    """The ``visible`` of a search among indexed images (any owner) for images being embedded now."""
    def indexed(candidates: set[int]) -> set[int]:
        return set(Image.objects.filter(id__in=candidates - fresh, state=Image.State.INDEXED)
                   .values_list("id", flat=True))

    return indexed


def copies_record(*, found: Found, image_ids: list[int]) -> None:
    """Store the notices of these images (in the transaction that indexes them). Embedding an image
    again replaces its notice and never puts the same pair up for review twice."""
    # An original deleted since the lookup is no longer there to be copied.
    remaining = set(Image.objects.filter(pk__in={original_id for original_id, _ in found.values()})
                    .values_list("pk", flat=True))
    for image_id in image_ids:
        if image_id not in found or found[image_id][0] not in remaining:
            continue
        original_id, similarity = found[image_id]
        _, created = CopyNotice.objects.update_or_create(image_id=image_id, defaults={
            "original_id": original_id, "similarity": similarity})
        if created:
            DuplicateGroup.objects.create(scan=None, exact=similarity >= EXACT_SIMILARITY,
                                          lowest_similarity=similarity, image_ids=[original_id, image_id])


def copy_notices_shown(*, image_ids: list[int], user: User | AnonymousUser) -> dict[int, int]:
    """For each of these images noticed as an edited copy of an image that ``user`` may see: that image's id."""
    notices = dict(CopyNotice.objects.filter(image_id__in=image_ids).values_list("image_id", "original_id"))
    shown = set(gallery_selectors.image_list_visible(user=user).filter(pk__in=set(notices.values()))
                .values_list("pk", flat=True))
    return {image_id: original_id for image_id, original_id in notices.items() if original_id in shown}
