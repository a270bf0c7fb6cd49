"""Mini-batch spherical k-means over streamed batches (core.kmeans), on synthetic blobs."""
import numpy as np
import pytest

from core import kmeans


def blobs(centres: int, per_centre: int, dim: int = 32, spread: float = 0.05, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``centres`` random directions, with each vector's true centre, grouped by
    centre (as an import of one folder after another reaches the database)."""
    rng = np.random.default_rng(seed)
    directions = kmeans.normalised(rng.standard_normal((centres, dim)))
    truth = np.repeat(np.arange(centres), per_centre)
    vectors = kmeans.normalised(directions[truth] + spread * rng.standard_normal((len(truth), dim)))
    return vectors, truth


def batches_of(vectors: np.ndarray, size: int):
    return lambda: (vectors[i:i + size] for i in range(0, len(vectors), size))


def agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Purity: the share of vectors in the majority true group of their cluster."""
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(labels)


def test_it_recovers_well_separated_clusters_streamed_in_small_batches_in_group_order():
    vectors, truth = blobs(centres=6, per_centre=300)

    fitted = kmeans.fit(batches_of(vectors, 64), 6, seed=1, sample_size=200)
    labels, similarities = fitted.assign(vectors)

    assert agreement(labels, truth) == 1.0
    assert len(set(labels)) == 6
    assert similarities.min() > 0.8
    assert np.allclose(np.linalg.norm(fitted.centroids, axis=1), 1.0, atol=1e-5)
    assert fitted.centroids.dtype == np.float32


def test_it_is_deterministic_for_a_seed():
    vectors, _ = blobs(centres=5, per_centre=100, spread=0.3)

    first = kmeans.fit(batches_of(vectors, 50), 5, seed=7)
    second = kmeans.fit(batches_of(vectors, 50), 5, seed=7)

    assert np.array_equal(first.centroids, second.centroids)


def test_it_holds_one_batch_and_the_sample_never_the_whole_stream():
    dim, batch = 16, 100
    rng = np.random.default_rng(0)
    largest: list[int] = []

    def stream():
        # Made on the fly, as rows read from the database: 20,000 vectors, never all at once.
        for _ in range(200):
            yield kmeans.normalised(rng.standard_normal((batch, dim)))

    def counting():
        for chunk in stream():
            largest.append(chunk.nbytes)
            yield chunk

    fitted = kmeans.fit(counting, 8, sample_size=500, epochs=1, lloyd_iterations=2)
    sample, seen, mean = kmeans.reservoir_sample(stream(), 500, np.random.default_rng(0))

    assert fitted.centroids.shape == (8, dim)
    assert sample.shape == (500, dim) and seen == 20_000 and mean.shape == (dim,)
    assert max(largest) == batch * dim * 4


def test_the_reservoir_sample_is_uniform_over_the_stream():
    values = np.arange(10_000, dtype=np.float32)[:, None]
    picks = np.concatenate([kmeans.reservoir_sample((values[i:i + 300] for i in range(0, 10_000, 300)), 100,
                                                    np.random.default_rng(seed))[0][:, 0] for seed in range(50)])

    # Each tenth of the stream gets about a tenth of the picks, the first batches no more than the last.
    shares = np.bincount((picks // 1000).astype(int), minlength=10) / len(picks)
    assert shares.min() > 0.07 and shares.max() < 0.13


def test_empty_clusters_take_over_the_worst_served_vectors_and_a_surplus_of_centroids_stays_empty():
    vectors, truth = blobs(centres=3, per_centre=50, spread=0.02)
    # Seeds all in one blob: two centroids would serve nothing without reseeding.
    seeds = vectors[:3].copy()

    refined = kmeans.lloyd(seeds, vectors, iterations=5)
    labels, _ = kmeans.assign(refined, vectors)
    assert agreement(labels, truth) == 1.0 and len(set(labels)) == 3

    # Three distinct vectors, five clusters: two stay empty, and nothing fails.
    repeated = np.repeat(vectors[[0, 50, 100]], 20, axis=0)
    fitted = kmeans.fit(batches_of(repeated, 16), 5, seed=0)
    labels, similarities = fitted.assign(repeated)
    assert len(set(labels)) == 3
    assert similarities.min() == pytest.approx(1.0, abs=1e-5)


def test_fewer_vectors_than_clusters_gives_one_cluster_a_vector_and_no_vectors_is_refused():
    vectors, _ = blobs(centres=2, per_centre=2)

    assert kmeans.fit(batches_of(vectors, 3), 10).centroids.shape == (4, 32)
    with pytest.raises(ValueError, match="no vectors"):
        kmeans.fit(lambda: iter([]), 3)


def test_the_cluster_count_grows_as_the_square_root_of_half_the_gallery_up_to_a_cap():
    assert kmeans.cluster_count(1) == 1
    assert kmeans.cluster_count(3) == 2
    assert kmeans.cluster_count(2_698) == 37
    assert kmeans.cluster_count(1_000_000) == 100
    assert kmeans.cluster_count(1_000_000, cap=500) == 500
