"""Finding the image that a query is a small part of (a heavy crop) among the best candidates.
Free of Django.

A crop searched whole is scaled up to the network's input: its global vector and its feature map
no longer line up with those of its original, and the original often ranks below other photos of
the same kind of subject. Embedded small instead, so that each position of its map spans about as
much of the picture as a position of the original's stored map does (``Embedder.local_maps_at``),
the crop's map is a window of the original's map. Slid over each candidate's stored map, at each
offset the mean cosine of the positions laid on each other says how well the crop fits there. The
original holds one window that fits far better than its others; another photo of the same kind of
subject fits about as well anywhere, and a plain or blurred query fits every candidate everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.rerank import LocalFeaturesMismatch

# A crop keeping 35 to 55 % of each side of its original covers as much of each side of the
# original's stored map: 5 to 8 of the default backbone's 14 positions.
CROP_SHARES = (0.35, 0.45, 0.5, 0.55)


def crop_sides(grid: int) -> list[int]:
    """The sides, in map positions, a query's map is made at to be laid on stored maps of ``grid`` x
    ``grid`` positions (``Embedder.local_maps_at``)."""
    return sorted({max(1, round(grid * share)) for share in CROP_SHARES})


def window_contrast(query_maps: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """Per candidate, how much better a query map fits the candidate's best window than its windows
    on average: the largest, over the query maps, of the best window's mean cosine less the mean of
    every window's.

    ``query_maps``: unit local descriptors of the query at several sides (each side x side
    positions x width); ``candidates``: candidates x positions x width, of square maps at least as
    large as every query map.
    """
    if candidates.ndim != 3:
        raise LocalFeaturesMismatch(f"candidate maps must be candidates x positions x width, not {candidates.shape}")
    count, positions, width = candidates.shape
    side = math.isqrt(positions)
    if side * side != positions:
        raise LocalFeaturesMismatch(f"candidate maps of {positions} positions are not square")
    contrast = np.zeros(count, dtype=np.float32)
    if not count:
        return contrast
    for query in query_maps:
        small = math.isqrt(len(query))
        if small * small != len(query) or small > side or query.shape[1] != width:
            raise LocalFeaturesMismatch(f"a query map of shape {query.shape} cannot be laid on maps of {side} x "
                                        f"{side} positions of width {width}")
        similarity = (query @ candidates.reshape(count * positions, width).T).reshape(small, small, count, side, side)
        offsets = side - small + 1
        # Sum, for every offset at once, each query position's cosine with the position it lies on.
        fit = np.zeros((count, offsets, offsets), dtype=np.float32)
        for row in range(small):
            for column in range(small):
                fit += similarity[row, column, :, row:row + offsets, column:column + offsets]
        per_offset = fit.reshape(count, -1) / (small * small)
        contrast = np.maximum(contrast, per_offset.max(axis=1) - per_offset.mean(axis=1))
    return contrast
