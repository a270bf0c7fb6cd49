"""Maximal marginal relevance: pick results that are each close to the query and unlike those
already picked, so that a list of recommendations is not twelve versions of one picture. Free of Django.
"""
from __future__ import annotations

import numpy as np

# 1 ranks by relevance alone; 0 by difference alone. 0.7 keeps the closest first and drops
# a candidate that is nearly the same as one already picked.
RELEVANCE_WEIGHT = 0.7
# What the site recommends: this many images, picked from this many nearest neighbours.
RECOMMENDED = 12
CANDIDATES = 60


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, *, weight: float = RELEVANCE_WEIGHT) -> list[int]:
    """Indexes of up to ``k`` candidates in the order picked.

    ``relevance``: each candidate's similarity to the query; ``vectors``: the candidates' unit
    vectors (one row each), whose inner products say how alike two candidates are.
    """
    if len(relevance) != len(vectors):
        raise ValueError(f"{len(relevance)} relevance scores for {len(vectors)} vectors")
    count = min(k, len(relevance))
    if count <= 0:
        return []
    alike = np.full(len(relevance), -np.inf, dtype=np.float32)
    chosen: list[int] = []
    available = np.ones(len(relevance), dtype=bool)
    for _ in range(count):
        penalty = np.where(np.isneginf(alike), 0.0, alike)
        score = weight * relevance - (1.0 - weight) * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        available[best] = False
        alike = np.maximum(alike, vectors @ vectors[best])
    return chosen
