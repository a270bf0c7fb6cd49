"""Broad words for a picture from an ImageNet classifier's output, for tag suggestions before
anything is tagged. Free of Django.

``core/data/imagenet_words.json`` (made by ``bin/imagenet-words`` from WordNet) gives, for
each of the 1,000 classes, the words it falls under, the closest first: a "tabby" is a "cat", an
"animal" and a "mammal". A word's score is the probability of all the classes under it together.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

WORDS_FILE = Path(__file__).resolve().parent / "data" / "imagenet_words.json"
# Words this general say little that a person would search for.
TOO_BROAD = frozenset({"animal", "mammal"})


@cache
def class_words() -> tuple[tuple[str, ...], ...]:
    """The words of each class, in the order of the classifier's outputs."""
    classes = json.loads(WORDS_FILE.read_text())["classes"]
    return tuple(tuple(entry["words"]) for entry in classes)


@cache
def _membership() -> tuple[tuple[str, ...], np.ndarray]:
    """Every word, and a classes x words matrix of 1 where a class falls under a word."""
    words = sorted({word for entry in class_words() for word in entry} - TOO_BROAD)
    column = {word: i for i, word in enumerate(words)}
    matrix = np.zeros((len(class_words()), len(words)), dtype=np.float32)
    for row, entry in enumerate(class_words()):
        for word in entry:
            if word in column:
                matrix[row, column[word]] = 1.0
    return tuple(words), matrix


def word_scores(probabilities: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """For images x classes probabilities: the words, and images x words scores (each from 0 to 1)."""
    words, matrix = _membership()
    if probabilities.ndim != 2 or probabilities.shape[1] != matrix.shape[0]:
        raise ValueError(f"expected probabilities over {matrix.shape[0]} classes, got shape {probabilities.shape}")
    return words, probabilities.astype(np.float32) @ matrix


def words_for(probabilities: np.ndarray, *, min_score: float, most: int = 3) -> list[list[tuple[str, float]]]:
    """Per image, up to ``most`` (word, score) with a score of at least ``min_score``, best first."""
    words, scores = word_scores(probabilities)
    result = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:most]
        result.append([(words[i], float(row[i])) for i in order if row[i] >= min_score])
    return result
