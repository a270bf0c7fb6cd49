"""Reads of the search app: the images most similar to a picture, a vector or a gallery image."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
from django.conf import settings
from django.db.models import QuerySet
from PIL.Image import Image as PILImage

from gallery.models import Image
from search import changelog, generations, latency, runtime
from search.index import exact_search
from search.models import Embedding
from search.reader import Hit, IndexReader

# A filter that leaves at most this many images is answered by exact search over their stored
# vectors: over-fetching from HNSW would have to read most of the index to find them.
EXACT_SEARCH_MAX_CANDIDATES = 5000


class SearchUnavailable(RuntimeError):
    """Search cannot answer correctly until an operator acts; the message says how."""


@dataclass(frozen=True)
class SimilarImage:
    image: Image
    score: float  # cosine similarity, 1.0 for the same picture


@dataclass(frozen=True)
class SearchFilters:
    tags: tuple[str, ...] = ()  # images with every one of these tags
    uploader: str = ""  # a user name
    uploaded_from: date | None = None  # inclusive
    uploaded_to: date | None = None  # inclusive

    @property
    def active(self) -> bool:
        return bool(self.tags or self.uploader or self.uploaded_from or self.uploaded_to)


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
    return images


def visible_image_ids(ids: set[int]) -> set[int]:
    return _visible_under(SearchFilters())(ids)


def _visible_under(filters: SearchFilters) -> Callable[[set[int]], set[int]]:
    def visible(ids: set[int]) -> set[int]:
        return set(searchable_images(filters=filters).filter(id__in=ids).values_list("id", flat=True))

    return visible


def _ensure_one_vector_kind() -> None:
    identity = runtime.index_identity()
    other = Embedding.objects.other_than(identity).values_list("backbone", "backbone_version").first()
    if other and not generations.vectors_expected(other):
        raise SearchUnavailable(
            f"Some images were embedded with {other[0]} ({other[1]}), but the site now uses "
            f"{identity.backbone} ({identity.backbone_version}). Vectors of different models cannot be "
            "compared: run `python manage.py reindex`."
        )


def clamp_k(k: int | None) -> int:
    return max(1, min(k or settings.LOOKALIKE_SEARCH_DEFAULT_K, settings.LOOKALIKE_SEARCH_MAX_K))


def similar_to_vectors(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None = None,
                       filters: SearchFilters = SearchFilters(), reader: IndexReader | None = None
                       ) -> list[list[SimilarImage]]:
    """``reader``: the one whose identity made the vectors, when a reindex may switch it meanwhile."""
    _ensure_one_vector_kind()
    reader = reader or runtime.index_reader()
    started = time.perf_counter()
    hits = _filtered_hits(vectors, k, exclude, filters, reader) if filters.active else None
    if hits is None:
        hits = reader.search(vectors, k, visible=_visible_under(filters), exclude=exclude)
    latency.record(time.perf_counter() - started)
    images = Image.objects.select_related("owner").in_bulk({hit.image_id for row in hits for hit in row})
    return [[SimilarImage(images[hit.image_id], hit.score) for hit in row if hit.image_id in images]
            for row in hits]


def _filtered_hits(vectors: np.ndarray, k: int, exclude: list[list[int]] | None,
                   filters: SearchFilters, reader: IndexReader) -> list[list[Hit]] | None:
    """Exact search over the few images a narrow filter leaves, or None when it leaves many."""
    candidates = list(searchable_images(filters=filters).values_list("id", flat=True)[:EXACT_SEARCH_MAX_CANDIDATES + 1])
    if len(candidates) > EXACT_SEARCH_MAX_CANDIDATES:
        return None
    stored = changelog.vectors_for(reader.identity, candidates)
    ids = np.fromiter(stored, dtype=np.int64, count=len(stored))
    matrix = np.stack(list(stored.values())) if stored else np.zeros((0, vectors.shape[1]), dtype=np.float32)
    rows = []
    for row, query in enumerate(vectors):
        skip = set(exclude[row]) if exclude else set()
        labels, scores = exact_search(query[None, :], ids, matrix, k + len(skip))
        rows.append([Hit(i, s) for i, s in zip(labels[0].tolist(), scores[0].tolist(), strict=True)
                     if i not in skip][:k])
    return rows


def similar_to_pictures(pictures: list[PILImage], *, k: int) -> list[list[SimilarImage]]:
    """Search with decoded pictures (see ``gallery.imaging.decode_image``), one result list each."""
    if not pictures:
        return []
    reader = runtime.index_reader()
    vectors = runtime.embedder_for(reader.identity.backbone).embed(pictures)
    return similar_to_vectors(vectors, k=k, reader=reader)


def similar_to_image(image: Image, *, k: int) -> list[SimilarImage]:
    """Images like a gallery image, by its stored vector (nothing is embedded again); not itself."""
    reader = runtime.index_reader()
    embedding = Embedding.objects.of(reader.identity).filter(image=image).first()
    if embedding is None:
        raise SearchUnavailable(f"Image #{image.pk} is not indexed yet ({image.get_state_display().lower()}).")
    return similar_to_vectors(embedding.as_array()[None, :], k=k, exclude=[[image.pk]], reader=reader)[0]
