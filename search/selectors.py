"""Reads of the search app: the images most similar to a picture, a vector or a gallery image."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL.Image import Image as PILImage

from gallery.models import Image
from search import generations, latency, runtime
from search.models import Embedding
from search.reader import IndexReader


class SearchUnavailable(RuntimeError):
    """Search cannot answer correctly until an operator acts; the message says how."""


@dataclass(frozen=True)
class SimilarImage:
    image: Image
    score: float  # cosine similarity, 1.0 for the same picture


def visible_image_ids(ids: set[int]) -> set[int]:
    return set(Image.objects.filter(id__in=ids, state=Image.State.INDEXED, hidden=False).values_list("id", flat=True))


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
                       reader: IndexReader | None = None) -> list[list[SimilarImage]]:
    """``reader``: the one whose identity made the vectors, when a reindex may switch it meanwhile."""
    _ensure_one_vector_kind()
    started = time.perf_counter()
    hits = (reader or runtime.index_reader()).search(vectors, k, visible=visible_image_ids, exclude=exclude)
    latency.record(time.perf_counter() - started)
    images = Image.objects.in_bulk({hit.image_id for row in hits for hit in row})
    return [[SimilarImage(images[hit.image_id], hit.score) for hit in row if hit.image_id in images]
            for row in hits]


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
