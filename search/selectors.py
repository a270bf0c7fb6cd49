"""Reads of the search app: the images most similar to a picture, a vector or a gallery image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL.Image import Image as PILImage

from gallery.models import Image
from search import generations, runtime
from search.models import Embedding


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


def similar_to_vectors(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None = None
                       ) -> list[list[SimilarImage]]:
    _ensure_one_vector_kind()
    hits = runtime.index_reader().search(vectors, k, visible=visible_image_ids, exclude=exclude)
    images = Image.objects.in_bulk({hit.image_id for row in hits for hit in row})
    return [[SimilarImage(images[hit.image_id], hit.score) for hit in row if hit.image_id in images]
            for row in hits]


def similar_to_pictures(pictures: list[PILImage], *, k: int) -> list[list[SimilarImage]]:
    """Search with decoded pictures (see ``gallery.imaging.decode_image``), one result list each."""
    if not pictures:
        return []
    return similar_to_vectors(runtime.embedder().embed(pictures), k=k)


def similar_to_image(image: Image, *, k: int) -> list[SimilarImage]:
    """Images like a gallery image, by its stored vector (nothing is embedded again); not itself."""
    identity = runtime.index_identity()
    embedding = Embedding.objects.of(identity).filter(image=image).first()
    if embedding is None:
        raise SearchUnavailable(f"Image #{image.pk} is not indexed yet ({image.get_state_display().lower()}).")
    return similar_to_vectors(embedding.as_array()[None, :], k=k, exclude=[[image.pk]])[0]
