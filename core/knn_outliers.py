"""How unusual an image is among the gallery's vectors. Free of Django.

An image's *distance* is the cosine distance (1 - similarity) to its ``K``-th nearest other image:
a photo of the kind the gallery holds has many close neighbours, a drawing or a screenshot among
photos has none. The K-th rather than the nearest, so that a group of alike odd pictures (one
uploaded a few times over, a folder of screenshots) does not make each of them look ordinary:
bench/outliers.py finds groups of 12 or 13 alike odd pictures scored as ordinary below k=20.

Its *score* is the percentile of that distance among the gallery's: the share of the other scored
images whose distance is smaller, from 0 to 100. A percentile rather than the raw distance or a
z-score: raw distances depend on the backbone and on how dense the gallery is, and kNN distances
have a long right tail (the outliers themselves) that inflates the standard deviation a z-score
divides by. A percentile means the same for any backbone and gallery, and a threshold on it says
how many ordinary uploads it catches: holding uploads scored 99 or more sends about 1 % to review.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.reader import IndexReader

# The neighbour whose distance counts; see the module's docstring (bench/outliers.py compares others).
K = 20
# Queries sent to the index at once: bounds the memory of a run over the whole gallery.
BATCH = 256


def kth_distances(reader: IndexReader, ids: Sequence[int], vectors: np.ndarray, *,
                  visible: Callable[[set[int]], set[int]], k: int = K) -> dict[int, float]:
    """The distance of each image to its k-th nearest visible image other than itself, by id.

    An image with fewer than k such images has the distance to the farthest of them; one with none
    has no distance and is left out.
    """
    distances: dict[int, float] = {}
    for start in range(0, len(ids), BATCH):
        batch = list(ids[start:start + BATCH])
        rows = reader.search(vectors[start:start + BATCH], k, visible=visible, exclude=[[i] for i in batch])
        for image_id, row in zip(batch, rows, strict=True):
            if row:
                distances[image_id] = 1.0 - row[-1].score
    return distances


def share_below(below: np.ndarray | int, others: int) -> np.ndarray | float:
    """The score: the percentage of ``others`` images whose distance is smaller (``below`` of them)."""
    if others <= 0:
        raise ValueError("a score needs at least one other image to compare with")
    return 100.0 * np.asarray(below, dtype=np.float64) / others


def percentile_scores(distances: np.ndarray) -> np.ndarray:
    """The score of each of these distances among all of them (each compared with the others)."""
    ordered = np.sort(distances)
    return np.asarray(share_below(np.searchsorted(ordered, distances, side="left"), len(distances) - 1))
