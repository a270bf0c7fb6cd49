"""Re-ranking by matching feature-map positions, without Django."""
import numpy as np
import pytest

from core import rerank
from core.rerank import LocalFeaturesMismatch, local_descriptors, mutual_matches


def random_map(seed: int, positions: int = 49, channels: int = 320) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((positions, channels)).astype(np.float16)


def test_local_descriptors_are_unit_rows_with_signs_kept_apart():
    descriptors = local_descriptors(random_map(1), signed=True)
    assert descriptors.shape == (49, 640)
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    assert (descriptors >= 0).all()
    assert local_descriptors(random_map(1), signed=False).shape == (49, 320)


def test_an_all_zero_position_stays_zero_instead_of_dividing_by_zero():
    feature_map = random_map(1)
    feature_map[3] = 0
    descriptors = local_descriptors(feature_map, signed=True)
    assert np.isfinite(descriptors).all() and not descriptors[3].any()


def test_a_feature_map_must_be_two_dimensional():
    with pytest.raises(LocalFeaturesMismatch, match="positions x channels"):
        local_descriptors(np.zeros((7, 7, 320)), signed=True)


def test_a_map_matches_itself_everywhere_a_shuffled_copy_too_and_another_map_almost_nowhere():
    descriptors = local_descriptors(random_map(2), signed=True)
    shuffled = descriptors[np.random.default_rng(0).permutation(49)]
    other = local_descriptors(random_map(4), signed=True)
    matches, _ = mutual_matches(descriptors, np.stack([descriptors, shuffled, other]))
    assert matches[0] == 49
    assert matches[1] == 49, "positions may move (crop, mirror)"
    assert matches[2] <= 2


def test_matches_that_keep_their_layout_are_coherent_and_scattered_ones_are_not():
    query = local_descriptors(random_map(2, positions=196), signed=True)
    grid = np.arange(196).reshape(14, 14)
    # The same 3 x 4 patch of the query, moved two rows down and one column over: a crop.
    patch = local_descriptors(random_map(4, positions=196), signed=True)
    patch[grid[5:8, 4:8].ravel()] = query[grid[3:6, 3:7].ravel()]
    # Twelve query positions none of which neighbours another, spread over the candidate at random.
    scattered = local_descriptors(random_map(5, positions=196), signed=True)
    apart = grid[::4, ::4].ravel()[:12]
    scattered[np.random.default_rng(0).permutation(196)[:12]] = query[apart]
    shuffled_whole = query[np.random.default_rng(1).permutation(196)]
    matches, coherent = mutual_matches(query, np.stack([patch, scattered, query[grid[:, ::-1].ravel()],
                                                        shuffled_whole]))
    assert matches[0] >= 12 and coherent[0] >= 12
    assert matches[1] >= 12 and coherent[1] <= 2
    assert matches[2] == coherent[2] == 196, "a mirror image keeps neighbours together"
    assert matches[3] == 196 and coherent[3] < 0.7 * matches[3], "positions shuffled at random lose many neighbours"


def test_a_lone_match_is_not_coherent():
    query = local_descriptors(random_map(2), signed=True)
    candidate = local_descriptors(random_map(4), signed=True)
    candidate[24] = query[24]
    matches, coherent = mutual_matches(query, candidate[None])
    assert matches[0] >= 1 and coherent[0] == 0


def test_maps_that_are_not_one_square_grid_are_refused():
    with pytest.raises(LocalFeaturesMismatch, match="not one square grid"):
        mutual_matches(local_descriptors(random_map(3, positions=50), signed=True),
                       local_descriptors(random_map(4, positions=50), signed=True)[None])


def test_each_candidate_is_counted_on_its_own():
    query = local_descriptors(random_map(2), signed=True)
    half = query.copy()
    half[:20] = local_descriptors(random_map(5), signed=True)[:20]
    candidates = np.stack([local_descriptors(random_map(4), signed=True), half, query])
    alone = [[int(count[0]) for count in mutual_matches(query, candidate[None])] for candidate in candidates]
    together = mutual_matches(query, candidates)
    assert [[int(together[0][i]), int(together[1][i])] for i in range(3)] == alone
    alone = [matches for matches, _ in alone]
    assert 25 <= alone[1] <= 29


def test_maps_of_different_widths_are_refused():
    with pytest.raises(LocalFeaturesMismatch, match="cannot be compared"):
        mutual_matches(local_descriptors(random_map(3), signed=True),
                       local_descriptors(random_map(3), signed=False)[None])


def test_an_empty_map_matches_nothing():
    matches, coherent = mutual_matches(np.zeros((0, 640), np.float32),
                                       local_descriptors(random_map(3), signed=True)[None])
    assert list(matches) == [0] and list(coherent) == [0]


def test_matches_lift_a_candidate_above_a_slightly_better_global_score():
    query = random_map(5)
    # Half the positions of the original survive the edit; the other photo shares none.
    original = query.copy()
    original[::2] = random_map(6)[::2]
    views = [local_descriptors(query, signed=True)]
    local_of = {1: local_descriptors(original, signed=True), 2: local_descriptors(random_map(7), signed=True)}
    ranked = rerank.rerank([(2, 0.90), (1, 0.88), (3, 0.80)], query_views=views, local_of=local_of)
    assert ranked == [(1, 0.88), (2, 0.90), (3, 0.80)], "scores stay the global cosine"


def test_the_best_matching_view_of_the_query_counts():
    original = random_map(8)
    views = [local_descriptors(random_map(9), signed=True), local_descriptors(original, signed=True)]
    local_of = {1: local_descriptors(original, signed=True), 2: local_descriptors(random_map(10), signed=True)}
    ranked = rerank.rerank([(2, 0.85), (1, 0.84)], query_views=views, local_of=local_of)
    assert [image_id for image_id, _ in ranked] == [1, 2]
