import datetime

import pytest

from search.queries import Box, QueryError, SearchFilters, search_params_from


def test_it_takes_a_json_object():
    params = search_params_from({"k": 5, "offset": 10, "min_score": 0.8, "tags": ["Beach", "dog"],
                                 "uploader": "alice", "uploaded_from": "2024-01-01", "uploaded_to": "2024-12-31",
                                 "box": {"x": 1, "y": 2, "width": 30, "height": 40}})
    assert params.k == 5 and params.offset == 10 and params.min_score == 0.8
    assert params.filters == SearchFilters(("beach", "dog"), "alice", datetime.date(2024, 1, 1),
                                           datetime.date(2024, 12, 31))
    assert params.box == Box(1, 2, 30, 40)


def test_everything_is_optional(settings):
    params = search_params_from({})
    assert params.k == settings.LOOKALIKE_SEARCH_DEFAULT_K
    assert (params.offset, params.min_score, params.box, params.filters.active) == (0, 0.0, None, False)


def test_the_form_fields_ask_for_the_same_search_again():
    params = search_params_from({"k": "12", "min_score": "0.5", "tags": "a, b", "box": "1,2,30,40"})
    assert search_params_from(dict(params.form_fields())) == params


@pytest.mark.parametrize(("data", "message"), [
    ({"k": True}, "k (the number of results) must be a whole number from 1 to 500"),
    ({"k": 2.5}, "k (the number of results)"),
    ({"k": [3]}, "k (the number of results)"),
    ({"offset": -1}, "offset (the offset) must be a whole number from 0"),
    ({"k": 400, "offset": 200}, "Results stop at the first 500"),
    ({"min_score": "NaN"}, "min_score must be a match from 0 to 1"),
    ({"tags": 7}, "tags must be a list of names"),
    ({"tags": ["ok", 3]}, "tags must be a list of names"),
    ({"uploader": ["a"]}, "uploader must be a user name"),
    ({"uploaded_from": 20240101}, "uploaded_from must be a date"),
])
def test_bad_parameters_get_a_clear_message(data, message):
    with pytest.raises(QueryError) as caught:
        search_params_from(data)
    assert caught.value.status == 400 and caught.value.code == "invalid_parameter"
    assert message in caught.value.message


@pytest.mark.parametrize("box", [{"x": 1, "y": 2, "width": 3}, {"x": "a", "y": 0, "width": 1, "height": 1},
                                 [1, 2, 3, 4], "1,2,3,4,5", {"x": 0, "y": 0, "width": 0, "height": 5}])
def test_a_bad_box_gets_a_clear_message(box):
    with pytest.raises(QueryError) as caught:
        search_params_from({"box": box})
    assert caught.value.code == "invalid_box" and caught.value.status == 400
