"""Mini-batch spherical k-means over unit vectors, streamed in batches. Free of Django.

The vectors are L2-normalised descriptors, so similarity is the dot product and each centroid is
kept at unit length (spherical k-means): a cluster's centroid is the mean direction of its members.
They are first centred on the mean of all of them (then normalised again): a descriptor made for
finding copies has a large part that every picture shares (the gallery's mean cosine is 0.75 with the
default backbone, 0.21 once centred), which otherwise makes one cluster of most of the gallery
(``bench/clusters.py``: on the shared gallery at k=5, 1,699 of 2,698 images in one cluster and
purity 0.56, against 0.69 and at most 778 once centred).

Nothing holds the whole gallery. ``fit`` takes a function that returns a fresh iterator of batches
(the caller reads them from the database in chunks) and passes over it a few times:

1. the mean, and a uniform sample of ``sample_size`` vectors by reservoir sampling, in one pass;
2. k-means++ seeds on that sample, refined by a few Lloyd iterations on it (cheap, and it places
   every centroid before the stream is seen in whatever order the database returns it: an import
   of folder after folder arrives one topic at a time);
3. ``epochs`` passes of mini-batch updates (Sculley 2010): each centroid moves towards the mean of
   its members in the batch by 1 / (the members it has had so far), so later batches refine rather
   than drag it;
4. the caller's own pass of ``Clustering.assign`` with the final centroids.

Memory is the sample, one batch and k centroids: (sample_size + batch + 2k) x dim floats, whatever
the number of vectors. A centroid that no vector chose in an epoch (an empty cluster) is moved onto
the sample vector that its nearest centroid serves worst, so that no centroid stays idle; one that
stays empty ends with no members, and the caller leaves it out.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

Batches = Callable[[], Iterable[np.ndarray]]

# Vectors sampled to seed the centroids; bounded whatever the gallery's size.
SAMPLE_SIZE = 20_000
EPOCHS = 2
LLOYD_ITERATIONS = 10


@dataclass(frozen=True)
class Clustering:
    centroids: np.ndarray  # k x dim, float32, unit rows, in the centred space
    mean: np.ndarray  # dim, float32: what every vector is centred on
    # Members each centroid had in the last epoch of updates (0: an empty cluster).
    counts: np.ndarray  # k, int64

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest centroid of each of these (uncentred) vectors, and the cosine to it once centred."""
        return assign(self.centroids, centred(vectors, self.mean))


def cluster_count(n: int, *, cap: int = 100) -> int:
    """A number of clusters for ``n`` vectors: sqrt(n / 2) (the usual rule of thumb), at least 2 and at
    most ``cap``, never more than ``n``."""
    return max(1, min(n, cap, max(2, round(math.sqrt(n / 2)))))


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return normalised(np.asarray(vectors, dtype=np.float32) - mean)


def assign(centroids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centroid of each vector (by cosine), and that similarity: one matrix product."""
    similarities = np.asarray(vectors, dtype=np.float32) @ centroids.T
    labels = np.argmax(similarities, axis=1)
    return labels, similarities[np.arange(len(labels)), labels]


def reservoir_sample(batches: Iterable[np.ndarray], size: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, int, np.ndarray]:
    """A uniform sample of at most ``size`` of the vectors (algorithm R, a batch at a time), how many
    vectors there were, and their mean."""
    sample: np.ndarray | None = None
    total = np.zeros(0, dtype=np.float64)
    seen = 0
    for batch in _as_float32(batches):
        if sample is None:
            sample = np.empty((size, batch.shape[1]), dtype=np.float32)
            total = np.zeros(batch.shape[1], dtype=np.float64)
        total += batch.sum(axis=0, dtype=np.float64)
        take = min(len(batch), max(0, size - seen))
        sample[seen:seen + take] = batch[:take]
        # Each later vector i (0-based, counting all seen) replaces a random slot with probability size / (i + 1).
        rest = batch[take:]
        if len(rest):
            positions = np.arange(seen + take, seen + len(batch))
            slots = (rng.random(len(rest)) * (positions + 1)).astype(np.int64)
            kept = slots < size
            # Later vectors win a slot that several take in one batch, as they would one at a time.
            sample[slots[kept]] = rest[kept]
        seen += len(batch)
    if sample is None:
        return np.empty((0, 0), dtype=np.float32), 0, total.astype(np.float32)
    return sample[:min(seen, size)], seen, (total / seen).astype(np.float32)


def kmeans_plus_plus(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k seeds chosen from the sample by greedy k-means++: each next seed is the best, by the total
    distance left, of 2 + log(k) candidates drawn in proportion to their cosine distance (half the
    squared Euclidean one) from the nearest seed so far. One candidate at a time, as in plain
    k-means++, puts two seeds in one blob and none in another often enough to matter on small
    galleries. Repeats the sample's vectors when it has fewer than k distinct ones."""
    trials = 2 + int(np.log(k))
    centroids = np.empty((k, sample.shape[1]), dtype=np.float32)
    centroids[0] = sample[rng.integers(len(sample))]
    distance = np.maximum(0.0, 1.0 - sample @ centroids[0])
    for j in range(1, k):
        total = float(distance.sum())
        if total <= 0:
            centroids[j] = sample[rng.integers(len(sample))]
            continue
        candidates = rng.choice(len(sample), size=trials, p=distance / total)
        options = np.minimum(distance[None, :], np.maximum(0.0, 1.0 - sample[candidates] @ sample.T))
        best = int(np.argmin(options.sum(axis=1)))
        centroids[j] = sample[candidates[best]]
        distance = options[best]
    return centroids


def _sums(labels: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: the sum of its members' vectors and their number."""
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    present = np.flatnonzero(counts)
    sums = np.zeros((k, vectors.shape[1]), dtype=np.float32)
    if len(present):
        starts = np.concatenate(([0], np.cumsum(counts[present])[:-1]))
        sums[present] = np.add.reduceat(vectors[order], starts, axis=0)
    return sums, counts


def _reseed_empty(centroids: np.ndarray, counts: np.ndarray, sample: np.ndarray) -> None:
    """Move each centroid that no vector chose onto the sample vector served worst, one at a time."""
    empty = np.flatnonzero(counts == 0)
    if not len(empty) or not len(sample):
        return
    _, best = assign(centroids, sample)
    for j in empty:
        worst = int(np.argmin(best))
        if best[worst] >= 1.0 - 1e-6:
            return  # every sample vector already sits on a centroid: nothing left to split
        centroids[j] = sample[worst]
        best[worst] = 1.0


def lloyd(centroids: np.ndarray, sample: np.ndarray, iterations: int) -> np.ndarray:
    """Plain spherical k-means iterations on an in-memory sample (refines the seeds)."""
    centroids = centroids.copy()
    k = len(centroids)
    for _ in range(iterations):
        labels, _ = assign(centroids, sample)
        sums, counts = _sums(labels, sample, k)
        present = counts > 0
        centroids[present] = normalised(sums[present])
        _reseed_empty(centroids, counts, sample)
    return centroids


def minibatch_update(centroids: np.ndarray, seen: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """One mini-batch step, in place: each centroid moves towards its members' mean by their share of
    all the members it has had (``seen``, updated too). Returns the batch's counts per centroid."""
    labels, _ = assign(centroids, batch)
    sums, counts = _sums(labels, batch, len(centroids))
    present = counts > 0
    seen += counts
    rate = (counts[present] / seen[present]).astype(np.float32)[:, None]
    means = sums[present] / counts[present, None].astype(np.float32)
    centroids[present] = normalised(centroids[present] * (1.0 - rate) + means * rate)
    return counts


def fit(batches: Batches, k: int, *, seed: int = 0, epochs: int = EPOCHS, sample_size: int = SAMPLE_SIZE,
        lloyd_iterations: int = LLOYD_ITERATIONS) -> Clustering:
    """k centroids of the vectors that ``batches()`` yields (unit float32 rows, the same every call),
    deterministic for a seed and the same batches. Fewer than k vectors give that many clusters."""
    rng = np.random.default_rng(seed)
    sample, n, mean = reservoir_sample(batches(), sample_size, rng)
    if n == 0:
        raise ValueError("there are no vectors to cluster")
    k = min(k, n)
    sample = centred(sample, mean)
    centroids = lloyd(kmeans_plus_plus(sample, k, rng), sample, lloyd_iterations)
    seen = np.zeros(k, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    for _ in range(epochs):
        counts = np.zeros(k, dtype=np.int64)
        for batch in _as_float32(batches()):
            counts += minibatch_update(centroids, seen, centred(batch, mean))
        _reseed_empty(centroids, counts, sample)
    return Clustering(centroids=centroids, mean=mean, counts=counts)


def _as_float32(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        if len(batch):
            yield np.asarray(batch, dtype=np.float32)
