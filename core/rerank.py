"""Re-ranking the best candidates of a search by matching feature-map positions. Free of Django.

The global vector finds candidates; it pools a whole feature map into one vector, so a crop,
a border or a caption shifts it, and two photos of the same kind of subject get close vectors.
Each image's finer feature map (for the default backbone 14 x 14 positions of 112 channels,
16 pixels apart in the 224-pixel input) is stored with its vector. For the best candidates,
positions of the query and of the candidate that are each other's nearest neighbour, and
similar enough, count as matches, and a match counts again when it is coherent: a neighbouring
position of the query is matched too, to a position near its own in the candidate. An edited
copy keeps the layout of its original, so its matches come in patches; another photo of the
same kind of subject shares a few scattered positions. The final score is the cosine of the
global vectors plus a small bonus per match and per coherent match; it was tuned on the
copy-detection benchmark (docs/benchmarks.md).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# How many of the best candidates (by global cosine) are compared position by position: 150
# found the original among the best 10 more often than 100 on the copy-detection benchmark, for
# half as much re-ranking again (docs/benchmarks.md).
RERANK_CANDIDATES = 150
# Cosine two positions must exceed to count as a match.
MATCH_THRESHOLD = 0.6
# Score added per match, and again per coherent match: 196 positions at most, so up to about
# 0.8 for a perfect match.
MATCH_WEIGHT = 0.001
COHERENT_MATCH_WEIGHT = 0.003
# How far apart (in positions, either axis) two neighbouring query positions' matches may lie in
# the candidate for both to be coherent: a crop or a border rescales, a rotation turns.
COHERENT_REACH = 2


class LocalFeaturesMismatch(ValueError):
    """Two feature maps that cannot be compared (different numbers of channels)."""


def local_descriptors(feature_map: np.ndarray, *, signed: bool) -> np.ndarray:
    """Unit-length descriptors of each position, positions x channels (x 2 when ``signed``).

    For a feature map without an activation (``signed``), the positive and the negative parts
    are kept apart, as the global vector pools them apart.
    """
    x = np.asarray(feature_map, dtype=np.float32)
    if x.ndim != 2:
        raise LocalFeaturesMismatch(f"a feature map must be positions x channels, not of shape {x.shape}")
    if signed:
        x = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    normalised: np.ndarray = x / np.maximum(norms, 1e-12)
    return normalised


def mutual_matches(query: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, the positions it shares with the query (each other's nearest, above the
    threshold), and how many of those are coherent.

    ``query`` is positions x width, ``candidates`` candidates x positions x width, both unit
    descriptors of square maps of the same size. One matrix product for all candidates: many
    small ones are slow.
    """
    if candidates.ndim != 3 or query.shape[-1] != candidates.shape[-1]:
        raise LocalFeaturesMismatch(f"feature maps of shapes {query.shape} and {candidates.shape} cannot be compared")
    count, positions = candidates.shape[:2]
    if not len(query) or not positions:
        return np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    side = math.isqrt(positions)
    if side * side != positions or len(query) != positions:
        raise LocalFeaturesMismatch(f"feature maps of {len(query)} and {positions} positions are not one square grid")
    similarity = (query @ candidates.reshape(count * positions, -1).T).reshape(len(query), count, positions)
    nearest = similarity.argmax(axis=2)  # query position -> candidate position, per candidate
    back = similarity.argmax(axis=0)  # candidate position -> query position, per candidate
    mutual = np.take_along_axis(back, nearest.T, axis=1) == np.arange(len(query))
    # The nearest's similarity, read rather than found again: a second pass over the whole
    # matrix costs as much as finding the nearest did.
    closest = np.take_along_axis(similarity, nearest[:, :, None], axis=2)[:, :, 0]
    matched = mutual & (closest.T > MATCH_THRESHOLD)
    coherent = _coherent(matched.reshape(count, side, side), nearest.T.reshape(count, side, side), side)
    return np.count_nonzero(matched, axis=1), np.count_nonzero(coherent, axis=(1, 2))


def _coherent(matched: np.ndarray, target: np.ndarray, side: int) -> np.ndarray:
    """Matched query positions (candidates x rows x columns) with a matched neighbour whose
    candidate position (``target``) lies within ``COHERENT_REACH`` of their own."""
    rows, columns = np.divmod(target, side)
    coherent = np.zeros_like(matched)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            # Compare each position (y, x) with its neighbour (y + dy, x + dx), where both exist.
            here = (slice(None), slice(max(-dy, 0), side - max(dy, 0)), slice(max(-dx, 0), side - max(dx, 0)))
            there = (slice(None), slice(max(dy, 0), side - max(-dy, 0)), slice(max(dx, 0), side - max(-dx, 0)))
            near = np.maximum(abs(rows[here] - rows[there]), abs(columns[here] - columns[there])) <= COHERENT_REACH
            coherent[here] |= matched[there] & near
    kept: np.ndarray = coherent & matched
    return kept


def rerank(candidates: Sequence[tuple[int, float]], *, query_views: Sequence[np.ndarray],
           local_of: dict[int, np.ndarray]) -> list[tuple[int, float]]:
    """Order (image id, global cosine) pairs by cosine plus match bonus, best first.

    ``query_views`` are the unit local descriptors of the query and of its variants (its
    mirror image): a candidate counts the matches of the view that matches it best.
    ``local_of`` gives each candidate's unit local descriptors, all of one shape; a candidate
    without them keeps its global score. The pairs are returned with their global cosine.
    """
    compared = [image_id for image_id, _ in candidates if image_id in local_of]
    bonus: dict[int, float] = {}
    if compared and query_views:
        stacked = np.stack([local_of[image_id] for image_id in compared])
        per_view = [mutual_matches(view, stacked) for view in query_views]
        best = np.max([MATCH_WEIGHT * matches + COHERENT_MATCH_WEIGHT * coherent for matches, coherent in per_view],
                      axis=0)
        bonus = dict(zip(compared, best.tolist(), strict=True))
    return sorted(candidates, key=lambda pair: pair[1] + bonus.get(pair[0], 0.0), reverse=True)
