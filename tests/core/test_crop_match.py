"""Finding the image a query is a small part of, without Django."""
import numpy as np
import pytest

from core.crop_match import crop_sides, window_contrast
from core.rerank import LocalFeaturesMismatch, local_descriptors


def unit_map(seed: int, side: int = 14, channels: int = 112) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((side * side, channels)).astype(np.float16)
    return local_descriptors(noise, signed=True)


def window(descriptors: np.ndarray, *, top: int, left: int, side: int) -> np.ndarray:
    grid = descriptors.reshape(14, 14, -1)
    return grid[top:top + side, left:left + side].reshape(side * side, -1)


def test_the_map_a_query_was_cut_from_has_one_window_that_fits_it_far_better_than_the_others():
    original, other = unit_map(1), unit_map(2)
    contrast = window_contrast([window(original, top=3, left=5, side=6)], np.stack([other, original]))
    assert contrast[1] > 0.6
    assert contrast[0] < 0.2


def test_a_query_that_fits_everywhere_alike_stands_out_nowhere():
    plain = np.tile(unit_map(3)[:1], (196, 1))
    contrast = window_contrast([plain[:36]], np.stack([plain, unit_map(4)]))
    assert contrast[0] == pytest.approx(0.0, abs=1e-4), "a plain query on a plain candidate fits every window"
    assert contrast[1] < 0.2


def test_each_candidate_counts_the_size_of_query_map_it_stands_out_most_at():
    original = unit_map(5)
    crops = [unit_map(6, side=8), window(original, top=0, left=0, side=5)]
    contrast = window_contrast(crops, np.stack([original, unit_map(7)]))
    assert contrast[0] > 0.6
    assert contrast[1] < 0.2


def test_a_window_in_the_last_row_and_column_is_reached():
    original = unit_map(8)
    contrast = window_contrast([window(original, top=6, left=6, side=8)], np.stack([original, unit_map(9)]))
    assert contrast[0] > 0.6 > contrast[1]


def test_no_candidates_give_nothing():
    assert window_contrast([unit_map(10, side=5)], np.zeros((0, 196, 224), dtype=np.float32)).shape == (0,)


def test_a_query_map_larger_than_the_candidates_is_refused():
    with pytest.raises(LocalFeaturesMismatch, match="cannot be laid"):
        window_contrast([unit_map(11, side=15)], unit_map(12)[None])


def test_maps_of_different_widths_are_refused():
    with pytest.raises(LocalFeaturesMismatch, match="cannot be laid"):
        window_contrast([unit_map(13, side=5, channels=56)], unit_map(14)[None])


def test_a_query_map_that_is_not_square_is_refused():
    with pytest.raises(LocalFeaturesMismatch, match="cannot be laid"):
        window_contrast([unit_map(15)[:30]], unit_map(16)[None])


def test_candidate_maps_must_be_stacked_square_maps():
    with pytest.raises(LocalFeaturesMismatch, match="candidates x positions x width"):
        window_contrast([unit_map(17, side=5)], unit_map(18))
    with pytest.raises(LocalFeaturesMismatch, match="not square"):
        window_contrast([unit_map(19, side=5)], unit_map(20)[None, :150])


def test_query_maps_are_made_at_the_share_of_the_stored_map_that_a_heavy_crop_covers():
    assert crop_sides(14) == [5, 6, 7, 8], "the default backbone's stride-16 map"
    assert crop_sides(7) == [2, 3, 4], "a backbone whose stored map is its last, stride-32 one"
    assert all(side < grid for grid in (4, 7, 14, 28) for side in crop_sides(grid))
