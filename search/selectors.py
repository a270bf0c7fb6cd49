"""Reads of the search app: the images most similar to a picture, a vector or a gallery image."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL import ImageOps
from PIL.Image import Image as PILImage

from gallery.models import Image
from search import rerank, runtime
from search.models import Embedding, local_features_array


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
    if other:
        raise SearchUnavailable(
            f"Some images were embedded with {other[0]} ({other[1]}), but the site now uses "
            f"{identity.backbone} ({identity.backbone_version}). Vectors of different models cannot be "
            "compared: run `python manage.py rebuild_index --reembed`."
        )


def clamp_k(k: int | None) -> int:
    return max(1, min(k or settings.LOOKALIKE_SEARCH_DEFAULT_K, settings.LOOKALIKE_SEARCH_MAX_K))


@dataclass
class SearchTimings:
    """Where a search spent its time, in seconds, for the ``Server-Timing`` response header."""

    embed: float = 0.0
    index: float = 0.0


def _results(rows: list[list[tuple[int, float]]]) -> list[list[SimilarImage]]:
    images = Image.objects.in_bulk({image_id for row in rows for image_id, _ in row})
    return [[SimilarImage(images[image_id], score) for image_id, score in row if image_id in images]
            for row in rows]


def _hits(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None = None) -> list[list[tuple[int, float]]]:
    _ensure_one_vector_kind()
    rows = runtime.index_reader().search(vectors, k, visible=visible_image_ids, exclude=exclude)
    return [[(hit.image_id, hit.score) for hit in row] for row in rows]


def similar_to_vectors(vectors: np.ndarray, *, k: int, exclude: list[list[int]] | None = None
                       ) -> list[list[SimilarImage]]:
    return _results(_hits(vectors, k=k, exclude=exclude))


def _stored_local_descriptors(image_ids: set[int]) -> dict[int, np.ndarray]:
    backbone = runtime.embedder().backbone
    rows = (Embedding.objects.of(runtime.index_identity()).filter(image_id__in=list(image_ids))
            .exclude(local_features=b"").values_list("image_id", "local_features"))
    return {image_id: rerank.local_descriptors(local_features_array(data, channels=backbone.channels),
                                               signed=backbone.signed)
            for image_id, data in rows}


def similar_to_pictures(pictures: list[PILImage], *, k: int, timings: SearchTimings | None = None
                        ) -> list[list[SimilarImage]]:
    """Search with decoded pictures (see ``gallery.imaging.decode_image``), one result list each.

    Each picture is searched together with its mirror image (a mirrored copy is a common edit),
    keeping an image's better cosine; the best candidates are then re-ranked by matching
    feature-map positions (``search.rerank``).
    """
    if not pictures:
        return []
    timings = timings or SearchTimings()
    started = time.perf_counter()
    embedder = runtime.embedder()
    described = embedder.describe([*pictures, *(ImageOps.mirror(p.convert("RGB")) for p in pictures)])
    timings.embed = time.perf_counter() - started
    started = time.perf_counter()
    count = len(pictures)
    rows = _hits(described.vectors, k=max(k, rerank.RERANK_CANDIDATES))
    merged = []
    for row, mirrored in zip(rows[:count], rows[count:], strict=True):
        best: dict[int, float] = {}
        for image_id, score in (*row, *mirrored):
            best[image_id] = max(score, best.get(image_id, -1.0))
        merged.append(sorted(best.items(), key=lambda pair: pair[1], reverse=True))
    local_of = _stored_local_descriptors({image_id for row in merged for image_id, _ in row[:rerank.RERANK_CANDIDATES]})
    ranked = []
    for i, row in enumerate(merged):
        views = [rerank.local_descriptors(described.local[j], signed=embedder.backbone.signed) for j in (i, count + i)]
        head = rerank.rerank(row[:rerank.RERANK_CANDIDATES], query_views=views, local_of=local_of)
        ranked.append((head + row[rerank.RERANK_CANDIDATES:])[:k])
    results = _results(ranked)
    timings.index = time.perf_counter() - started
    return results


def similar_to_image(image: Image, *, k: int, timings: SearchTimings | None = None) -> list[SimilarImage]:
    """Images like a gallery image, by its stored vector (nothing is embedded again); not itself."""
    started = time.perf_counter()
    identity = runtime.index_identity()
    embedding = Embedding.objects.of(identity).filter(image=image).first()
    if embedding is None:
        raise SearchUnavailable(f"Image #{image.pk} is not indexed yet ({image.get_state_display().lower()}).")
    results = similar_to_vectors(embedding.as_array()[None, :], k=k, exclude=[[image.pk]])[0]
    if timings is not None:
        timings.index = time.perf_counter() - started
    return results
