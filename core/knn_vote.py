"""Tag suggestions by the vote of the nearest tagged images. Free of Django.

Each of the ``k`` most similar tagged images votes for each of its tags with a weight that grows
steeply with its similarity, so that a near copy outweighs several images that are only alike.
A tag's confidence is its share of the votes: 1.0 when every voter carries it.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

# Voters: enough to outvote one mislabelled neighbour, few enough to stay in the query's neighbourhood.
VOTERS = 10
# Weight = similarity ** SHARPNESS: at 8, a neighbour at 0.9 counts twice as much as one at 0.8.
SHARPNESS = 8.0


def tag_vote(neighbours: Sequence[tuple[float, Collection[str]]], *, k: int = VOTERS,
             sharpness: float = SHARPNESS) -> list[tuple[str, float]]:
    """(tag, confidence) best first, from (similarity, tags) of tagged neighbours, closest first.

    Neighbours without tags are skipped, not counted as votes against: they are not labelled.
    """
    weights: dict[str, float] = {}
    total = 0.0
    for similarity, tags in [n for n in neighbours if n[1]][:k]:
        weight = max(similarity, 0.0) ** sharpness
        total += weight
        for tag in tags:
            weights[tag] = weights.get(tag, 0.0) + weight
    if total <= 0.0:
        return []
    return sorted(((tag, weight / total) for tag, weight in weights.items()), key=lambda pair: (-pair[1], pair[0]))
