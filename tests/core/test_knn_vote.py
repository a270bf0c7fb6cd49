"""The neighbour vote behind tag suggestions, and the classifier's words for a cold start."""
import json

import numpy as np
import pytest

from core import imagenet_words
from core.knn_vote import tag_vote


def test_the_closest_neighbours_outvote_many_that_are_only_alike():
    neighbours = [(0.95, {"cat"}), (0.94, {"cat"}), (0.70, {"dog"}), (0.70, {"dog"}), (0.69, {"dog"})]

    votes = dict(tag_vote(neighbours))

    assert max(votes, key=votes.__getitem__) == "cat"
    assert votes["cat"] + votes["dog"] == pytest.approx(1.0)


def test_only_the_first_k_tagged_neighbours_vote_and_untagged_ones_are_skipped():
    neighbours = [(0.9, set()), (0.8, {"a"}), (0.8, {"a"}), (0.9, {"b"})]

    assert tag_vote(neighbours, k=2) == [("a", 1.0)]


def test_a_voter_with_two_tags_votes_for_both_and_nothing_to_vote_with_gives_nothing():
    assert tag_vote([(0.9, {"cat", "pet"})]) == [("cat", 1.0), ("pet", 1.0)]
    assert tag_vote([]) == []
    assert tag_vote([(0.9, set())]) == []


def test_the_classes_words_are_the_shipped_file_s_broad_words_and_a_word_sums_its_classes():
    classes = json.loads(imagenet_words.WORDS_FILE.read_text())["classes"]
    assert len(classes) == 1000
    names = [c["name"] for c in classes]
    tabby, tiger_cat, jersey = names.index("tabby"), names.index("tiger cat"), names.index("jersey")
    assert classes[tabby]["words"][0] == "cat"
    assert classes[jersey]["words"][:2] == ["shirt", "clothing"]
    probabilities = np.zeros((1, 1000), dtype=np.float32)
    probabilities[0, [tabby, tiger_cat, jersey]] = [0.3, 0.3, 0.4]

    [words] = imagenet_words.words_for(probabilities, min_score=0.35)

    assert words[0] == ("cat", pytest.approx(0.6))
    assert {w for w, _ in words} == {"cat", "shirt", "clothing"}
    assert "animal" not in {w for w, _ in imagenet_words.words_for(probabilities, min_score=0.0, most=50)[0]}


def test_words_refuse_probabilities_over_another_number_of_classes():
    with pytest.raises(ValueError, match="1000 classes"):
        imagenet_words.word_scores(np.zeros((1, 10)))
