"""Reads of the search app: the images most similar to a picture, a vector or a gallery image."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db.models import Q, QuerySet
from PIL.Image import Image as PILImage

from core import crop_match, rerank
from core.backbones import Backbone
from core.identity import IndexIdentity
from core.index import exact_search, stacked
from core.query_views import query_framings, second_look_views
from core.reader import Hit, IndexReader
from gallery import selectors as gallery_selectors
from gallery.models import Image
from search import changelog, generations, latency, runtime
from search.models import Embedding, local_features_array

if TYPE_CHECKING:  # torch is imported by the processes that embed only (search.runtime)
    from core.embedding import Embedder

# A filter that leaves at most this many images is answered by exact search over their stored
# vectors: over-fetching from HNSW would have to read most of the index to find them.
EXACT_SEARCH_MAX_CANDIDATES = 5000
# A query whose framings found no image with at least this cosine gets a second look
# (``core.query_views.second_look_views``): just under the default model's "edited copy"
# threshold (0.94, ``search.verdicts``), since a query that search already calls an edited copy of
# an image needs none, and a search with a gallery image's own file (a cosine of about 0.98) costs
# no more. On the hard edits of the copy-detection benchmark (seed 1) 0.93 found the same
# originals as a second look for every query, and 0.85 three fewer (docs/benchmarks.md).
SECOND_LOOK_BELOW = 0.93
# The second look's views join the first look's only when they found an image closer by this much.
# Joined on any gain, a quarter turn or a box of an ordinary photo that happens to resemble another
# image outranks the original that the first look found; on the copy-detection benchmark's hard
# edits this margin found more originals first than joining always. At 0.03 one query in 600 of
# the default edits lost its original on seeds 2 and 3, each to a box of the photo that was closer
# by 0.031 and 0.039 to another image; 0.04 keeps them and costs the hard edits one query in 600
# (docs/benchmarks.md).
SECOND_LOOK_MARGIN = 0.04
# A query that gets a second look is also checked for being a heavy crop of one of this many of its
# best candidates (``core.crop_match``): of the copy-detection benchmark's heavy crops that search
# missed (seed 1), 18 of 20 had their original among the first look's best 25, and checking 50 let
# another image stand out in a query of the default edits (docs/benchmarks.md).
CROP_CANDIDATES = 30
# A candidate whose best window stands out from its windows on average by this much is the image
# the query was cut from, and goes first. On hard edits of the copy-detection benchmark (seed 1)
# 0.28 found 14 more originals first (heavy crops 0.63 -> 0.85) and lost none; 0.24 and 0.26 found
# one or two fewer, and none changed a query of the default edits (docs/benchmarks.md).
CROP_CONTRAST_MIN = 0.28


class SearchUnavailable(RuntimeError):
    """Search cannot answer correctly until an operator acts; the message says how."""


@dataclass(frozen=True)
class SimilarImage:
    image: Image
    score: float  # cosine similarity of the query's vector and the image's
    # What results are shown and filtered by: the cosine, or, where re-ranking put the image above
    # a more alike one, that one's cosine, so that the number falls as the list goes on.
    match: float


@dataclass(frozen=True)
class SearchFilters:
    tags: tuple[str, ...] = ()  # images with every one of these tags
    uploader: str = ""  # a user name
    uploaded_from: date | None = None  # inclusive
    uploaded_to: date | None = None  # inclusive
    words: tuple[str, ...] = ()  # images whose tags hold every one of these words

    @property
    def active(self) -> bool:
        return bool(self.tags or self.uploader or self.uploaded_from or self.uploaded_to or self.words)


def searchable_images(*, filters: SearchFilters = SearchFilters()) -> QuerySet[Image]:
    """Images that search may return: indexed, not hidden, and passing the filters."""
    images = Image.objects.filter(state=Image.State.INDEXED, hidden=False)
    for tag in filters.tags:
        images = images.filter(tags__name=tag.lower())
    if filters.uploader:
        images = images.filter(owner__username__iexact=filters.uploader)
    if filters.uploaded_from:
        images = images.filter(created_at__date__gte=filters.uploaded_from)
    if filters.uploaded_to:
        images = images.filter(created_at__date__lte=filters.uploaded_to)
    for word in filters.words:
        images = images.filter(id__in=gallery_selectors.images_tagged_with_word(word=word).values("id"))
    return images


def _visible_under(filters: SearchFilters) -> Callable[[set[int]], set[int]]:
    def visible(ids: set[int]) -> set[int]:
        return set(searchable_images(filters=filters).filter(id__in=ids).values_list("id", flat=True))

    return visible


def _ensure_one_vector_kind() -> None:
    """Refuse to search while indexed images have only vectors of another model than the one in use
    (the model changed without a reindex): they could not be found. Vectors of another model
    beside the ones in use (left by a reindex that stopped; upkeep removes them) harm nothing."""
    identity = runtime.index_identity()
    kinds = set(Embedding.objects.other_than(identity).values_list("backbone", "backbone_version").distinct())
    unexpected = sorted(kind for kind in kinds if not generations.vectors_expected(kind))
    if not unexpected:
        return
    of_unexpected = Q()
    for backbone, version in unexpected:
        of_unexpected |= Q(backbone=backbone, backbone_version=version)
    stranded = (Embedding.objects.filter(of_unexpected, image__state=Image.State.INDEXED)
                .exclude(image_id__in=Embedding.objects.of(identity).values("image_id"))
                .values("image_id").distinct().count())
    if stranded:
        found = ", ".join(f"{backbone} ({version})" for backbone, version in unexpected)
        raise SearchUnavailable(
            f"{stranded} indexed images have no vector of {identity.backbone} ({identity.backbone_version}), "
            f"the model in use, only of {found}. Vectors of different models cannot be compared: "
            "run `python manage.py reindex`."
        )


@dataclass
class SearchTimings:
    """Where a search spent its time, in seconds, for the ``Server-Timing`` response header."""

    embed: float = 0.0
    index: float = 0.0


def _results(rows: list[list[tuple[int, float, float]]]) -> list[list[SimilarImage]]:
    images = Image.objects.select_related("owner").in_bulk({image_id for row in rows for image_id, _, _ in row})
    return [[SimilarImage(images[image_id], score, match) for image_id, score, match in row if image_id in images]
            for row in rows]


def _with_matches(row: list[tuple[int, float]]) -> list[tuple[int, float, float]]:
    """A ranked row's (image id, cosine) pairs, each with its match: the best cosine at or below it.

    The re-ranked score that orders a search by picture is no percentage (its bonus for shared
    details reaches 0.2 between unrelated drawings of shapes, lifting them past 1), and the cosine
    alone is not in the order of the list. An image ranked above a more alike one is at least as good a
    match as that one, so it shows that one's cosine: a person reads the order and the number
    together, and a minimum cuts the list at one place. For a row in cosine order it is the cosine.
    """
    matched: list[tuple[int, float, float]] = []
    best = -1.0
    for image_id, score in reversed(row):
        best = max(best, score)
        matched.append((image_id, score, best))
    return matched[::-1]


def _hits(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None, filters: SearchFilters,
          reader: IndexReader) -> list[list[tuple[int, float]]]:
    _ensure_one_vector_kind()
    started = time.perf_counter()
    hits = _filtered_hits(vectors, k, exclude, filters, reader) if filters.active else None
    if hits is None:
        hits = reader.search(vectors, k, visible=_visible_under(filters), exclude=exclude)
    latency.record(time.perf_counter() - started)
    return [[(hit.image_id, hit.score) for hit in row] for row in hits]


def _filtered_hits(vectors: np.ndarray, k: int, exclude: list[list[int]] | None,
                   filters: SearchFilters, reader: IndexReader) -> list[list[Hit]] | None:
    """Exact search over the few images a narrow filter leaves, or None when it leaves many."""
    candidates = list(searchable_images(filters=filters).values_list("id", flat=True)[:EXACT_SEARCH_MAX_CANDIDATES + 1])
    if len(candidates) > EXACT_SEARCH_MAX_CANDIDATES:
        return None
    stored = changelog.vectors_for(reader.identity, candidates)
    ids, matrix = stacked(stored, reader.identity.dim)
    rows = []
    for row, query in enumerate(vectors):
        skip = set(exclude[row]) if exclude else set()
        labels, scores = exact_search(query[None, :], ids, matrix, k + len(skip))
        rows.append([Hit(i, s) for i, s in zip(labels[0].tolist(), scores[0].tolist(), strict=True)
                     if i not in skip][:k])
    return rows


def similar_to_vectors(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None = None,
                       filters: SearchFilters = SearchFilters(), reader: IndexReader | None = None
                       ) -> list[list[SimilarImage]]:
    """``reader``: the one whose identity made the vectors, when a reindex may switch it meanwhile."""
    rows = _hits(vectors, k=k, exclude=exclude, filters=filters, reader=reader or runtime.index_reader())
    return _results([_with_matches(row) for row in rows])


def _stored_local_descriptors(image_ids: set[int], identity: IndexIdentity, backbone: Backbone,
                              query_map: np.ndarray) -> dict[int, np.ndarray]:
    """The stored maps of these images that have the query's shape (``query_map``: positions x
    channels). A site upgraded without a reindex still searches under its older descriptor
    version, whose maps had another shape: those candidates keep their cosine alone."""
    rows = (Embedding.objects.of(identity).filter(image_id__in=list(image_ids))
            .exclude(local_features=b"").values_list("image_id", "local_features"))
    size = query_map.size * np.dtype(np.float16).itemsize
    return {image_id: rerank.local_descriptors(local_features_array(data, channels=backbone.local_width),
                                               signed=backbone.signed)
            for image_id, data in rows if len(data) == size}


def similar_to_pictures(pictures: list[PILImage], *, k: int, filters: SearchFilters = SearchFilters(),
                        reader: IndexReader | None = None, timings: SearchTimings | None = None
                        ) -> list[list[SimilarImage]]:
    """Search with decoded pictures (see ``core.imaging.decode_image``), one result list each.

    Each picture is searched in its framings (``core.query_views``: the whole picture and the
    inside of a plain frame), each with its mirror image, keeping an image's best cosine. A
    picture whose framings found no image closer than ``SECOND_LOOK_BELOW`` is searched again in
    its second-look views (its quarter turns and the pictures inside it), each a framing of its
    own, when ``LOOKALIKE_SEARCH_SECOND_LOOK`` is on; they count only if one of them found an image
    closer by ``SECOND_LOOK_MARGIN`` than the framings did. The best candidates are then re-ranked by
    matching feature-map positions (``core.rerank``) with the framing that found the closest
    image; after a second look, the image the picture is a heavy crop of goes first
    (``_cropped_from_first``). Each result's match is its cosine raised to the best cosine ranked
    below it.
    """
    if not pictures:
        return []
    reader = reader or runtime.index_reader()
    timings = timings or SearchTimings()
    embedder = runtime.embedder_for(reader.identity.backbone)
    search = functools.partial(_framings_searched, embedder=embedder, k=max(k, rerank.RERANK_CANDIDATES),
                               filters=filters, reader=reader, timings=timings)
    looks = search([[list(pair) for pair in query_framings(picture)] for picture in pictures])
    again: list[int] = []
    if settings.LOOKALIKE_SEARCH_SECOND_LOOK:
        again = [number for number, look in enumerate(looks) if _closest_score(look) < SECOND_LOOK_BELOW]
        more = search([[[view] for view in second_look_views(pictures[number])] for number in again])
        for number, framings in zip(again, more, strict=True):
            if _closest_score(framings) > _closest_score(looks[number]) + SECOND_LOOK_MARGIN:
                looks[number].extend(framings)
    started = time.perf_counter()
    sides = crop_match.crop_sides(embedder.recipe.input_size // embedder.backbone.local_stride)
    crop_maps = {number: [rerank.local_descriptors(local, signed=embedder.backbone.signed)
                          for local in embedder.local_maps_at(pictures[number], sides)]
                 for number in again}
    timings.embed += time.perf_counter() - started
    started = time.perf_counter()
    merged = [_best_of_views([row for framing in look for row, _ in framing]) for look in looks]
    heads = {image_id for row in merged for image_id, _ in row[:rerank.RERANK_CANDIDATES]}
    local_of = _stored_local_descriptors(heads, reader.identity, embedder.backbone, looks[0][0][0][1])
    ranked = []
    for number, (row, look) in enumerate(zip(merged, looks, strict=True)):
        # Re-ranking with every framing would cost as much again per framing, and ranked no
        # better on the copy-detection benchmark (docs/benchmarks.md).
        closest = max(look, key=lambda framing: _top_score([hits for hits, _ in framing]))
        local_views = [rerank.local_descriptors(local, signed=embedder.backbone.signed) for _, local in closest]
        head = rerank.rerank(row[:rerank.RERANK_CANDIDATES], query_views=local_views, local_of=local_of)
        if number in crop_maps:
            head = _cropped_from_first(head, row[:CROP_CANDIDATES], query_maps=crop_maps[number], local_of=local_of)
        # Matched over every candidate, not the page's: a later page must not show a higher number.
        ranked.append(_with_matches(head + row[rerank.RERANK_CANDIDATES:])[:k])
    results = _results(ranked)
    timings.index += time.perf_counter() - started
    return results


def _cropped_from_first(head: list[tuple[int, float]], best: list[tuple[int, float]], *,
                        query_maps: list[np.ndarray], local_of: dict[int, np.ndarray]) -> list[tuple[int, float]]:
    """``head`` with the image the query was cut from first, when one of the ``best`` candidates
    clearly is that image (``core.crop_match``; ``query_maps``: the query's unit local
    descriptors at ``crop_match.crop_sides``); as it was otherwise."""
    candidates = [image_id for image_id, _ in best if image_id in local_of]
    if not candidates:
        return head
    contrast = crop_match.window_contrast(query_maps, np.stack([local_of[image_id] for image_id in candidates]))
    found = int(np.argmax(contrast))
    if contrast[found] < CROP_CONTRAST_MIN:
        return head
    return sorted(head, key=lambda pair: pair[0] != candidates[found])


# A framing of a query: for each of its views, the view's hits and its feature map (positions x channels).
_Framing = list[tuple[list[tuple[int, float]], np.ndarray]]


def _framings_searched(views: list[list[list[PILImage]]], *, embedder: Embedder, k: int, filters: SearchFilters,
                       reader: IndexReader, timings: SearchTimings) -> list[list[_Framing]]:
    """``views``: per picture, its framings, each a list of views; the same, each view searched."""
    flat = [view for framings in views for framing in framings for view in framing]
    if not flat:
        return [[] for _ in views]
    started = time.perf_counter()
    described = embedder.describe(flat)
    timings.embed += time.perf_counter() - started
    started = time.perf_counter()
    rows = _hits(described.vectors, k=k, exclude=None, filters=filters, reader=reader)
    timings.index += time.perf_counter() - started
    searched = iter(zip(rows, described.local, strict=True))
    return [[[next(searched) for _ in framing] for framing in framings] for framings in views]


def _closest_score(look: list[_Framing]) -> float:
    return max((_top_score([hits for hits, _ in framing]) for framing in look), default=-1.0)


def _top_score(rows: list[list[tuple[int, float]]]) -> float:
    return max((row[0][1] for row in rows if row), default=-1.0)


def _best_of_views(rows: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """One picture's hits from the hits of its views, each image with its best cosine, best first."""
    best: dict[int, float] = {}
    for row in rows:
        for image_id, score in row:
            best[image_id] = max(score, best.get(image_id, -1.0))
    return sorted(best.items(), key=lambda pair: pair[1], reverse=True)


def similar_to_image(image: Image, *, k: int, filters: SearchFilters = SearchFilters(),
                     reader: IndexReader | None = None, timings: SearchTimings | None = None) -> list[SimilarImage]:
    """Images like a gallery image, by its stored vector (nothing is embedded again); not itself."""
    started = time.perf_counter()
    reader = reader or runtime.index_reader()
    embedding = Embedding.objects.of(reader.identity).filter(image=image).first()
    if embedding is None and image.state == Image.State.INDEXED:
        raise SearchUnavailable(f"Image #{image.pk} has no vector of the current model yet.")
    if embedding is None:
        raise SearchUnavailable(f"Image #{image.pk} is not indexed yet ({image.get_state_display().lower()}).")
    [similar] = similar_to_vectors(embedding.as_array()[None, :], k=k, exclude=[[image.pk]], filters=filters,
                                   reader=reader)
    if timings is not None:
        timings.index = time.perf_counter() - started
    return similar
