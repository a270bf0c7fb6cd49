#!/usr/bin/env python3
"""How well tag suggestions work, on ../shared/bench/images with the five folder names as tags. No Django.

Neighbour vote: a random 5% / 20% / 50% of the images keep their folder's name as their tag; every
other image gets the vote of its nearest tagged images (``core.knn_vote``, the same code the
site runs) over the gallery vectors the site stores (``gallery=True``). It reports the top-1
accuracy of the best suggestion, over all untagged images and over those whose best suggestion
reaches the confidence the site stores (``--min-confidence``, the site's
TAG_SUGGESTION_MIN_CONFIDENCE), and that coverage: the share of untagged images that get one.

Cold start: the default backbone's ImageNet classifier run on each image's stored feature map
(``core.imagenet_head``), its classes turned into words through WordNet
(``core.imagenet_words``); the category is the one of the five whose words score highest
(apparel: "clothing"; monkey: "monkey", "ape" or "lemur").

Scale (``--scale N``): N synthetic vectors mixed from the real ones (as ``bench/index_scale.py``
--vectors mixed), 20% tagged, in an HNSW index; the time and peak memory of suggesting tags for
every untagged image by searching the index for its nearest tagged images, as the site's job does.

    .venv/bin/python bench/tag_suggestions.py [--seeds 1 2 3] [--scale 100000] [--cache /tmp/tag-bench.npz]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.index_scale import mixed  # noqa: E402
from core.backbones import get_backbone  # noqa: E402
from core.knn_vote import tag_vote  # noqa: E402

CATEGORY_WORDS = {"apparel": ("clothing",), "cat": ("cat",), "dog": ("dog",), "monkey": ("monkey", "ape", "lemur"),
                  "squirrel": ("squirrel",)}


def describe_gallery(images: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Gallery vectors, stored feature maps and the category of each image (cached)."""
    if cache.exists():
        data = np.load(cache)
        return data["vectors"], data["local"], list(data["categories"])
    from core.embedding import Embedder

    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."))
    paths = sorted(images.rglob("*.jpg"))
    vectors, local = [], []
    for start in range(0, len(paths), 64):
        pictures = [Image.open(p).convert("RGB") for p in paths[start:start + 64]]
        described = embedder.describe(pictures, gallery=True)
        vectors.append(described.vectors)
        local.append(described.local)
    categories = [p.parent.name for p in paths]
    np.savez(cache, vectors=np.concatenate(vectors), local=np.concatenate(local), categories=np.array(categories))
    return np.concatenate(vectors), np.concatenate(local), categories


def vote_accuracy(vectors: np.ndarray, categories: list[str], share: float, seed: int,
                  min_confidence: float) -> tuple[float, float, float]:
    """(top-1 accuracy over all untagged, accuracy where confident, coverage) for one random tagging."""
    rng = np.random.default_rng(seed)
    tagged = rng.random(len(vectors)) < share
    tagged_ids = np.flatnonzero(tagged)
    scores = vectors[~tagged] @ vectors[tagged_ids].T
    truth = [c for c, t in zip(categories, tagged, strict=True) if not t]
    right = confident = confident_right = 0
    for row, category in zip(scores, truth, strict=True):
        order = np.argsort(-row)[:20]
        votes = tag_vote([(float(row[i]), {categories[tagged_ids[i]]}) for i in order])
        best, confidence = votes[0]
        right += best == category
        if confidence >= min_confidence:
            confident += 1
            confident_right += best == category
    n = len(truth)
    return right / n, confident_right / max(confident, 1), confident / n


def cold_start_accuracy(local: np.ndarray, categories: list[str]) -> tuple[float, dict[str, float]]:
    from core.imagenet_head import ImagenetHead
    from core.imagenet_words import word_scores

    head = ImagenetHead(get_backbone("efficientnet_lite0"))
    probabilities = np.concatenate([head.probabilities(local[i:i + 128]) for i in range(0, len(local), 128)])
    words, scores = word_scores(probabilities)
    column = {word: i for i, word in enumerate(words)}
    names = sorted(CATEGORY_WORDS)
    by_category = np.stack([scores[:, [column[w] for w in CATEGORY_WORDS[name]]].sum(axis=1) for name in names],
                           axis=1)
    predicted = [names[i] for i in by_category.argmax(axis=1)]
    hits = np.array([p == c for p, c in zip(predicted, categories, strict=True)])
    per = {name: float(hits[[c == name for c in categories]].mean()) for name in names}
    return float(hits.mean()), per


def at_scale(real: np.ndarray, count: int, share: float) -> tuple[float, float, int]:
    """(seconds, peak MiB of the process, images suggested for) over ``count`` synthetic vectors."""
    rng = np.random.default_rng(0)
    vectors = mixed(real, count, rng)
    tags = rng.integers(5, size=count)
    tagged = rng.random(count) < share
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=count, M=16, ef_construction=100)
    index.add_items(vectors, np.arange(count), num_threads=2)
    index.set_ef(256)
    started = time.perf_counter()
    untagged = np.flatnonzero(~tagged)
    for start in range(0, len(untagged), 512):
        batch = untagged[start:start + 512]
        fetch = 64
        labels, scores = index.knn_query(vectors[batch], k=fetch, num_threads=1)
        for row_labels, row_scores in zip(labels, scores, strict=True):
            neighbours = [(1.0 - float(d), {str(tags[i])}) for i, d in zip(row_labels, row_scores, strict=True)
                          if tagged[i]]
            tag_vote(neighbours)
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(untagged)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--min-confidence", type=float, default=0.5)
    ap.add_argument("--scale", type=int, default=0, help="also time suggesting tags for this many vectors")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    args = ap.parse_args()
    vectors, local, categories = describe_gallery(args.images, args.cache)
    print(f"{len(vectors)} images, {len(set(categories))} categories")
    for share in (0.05, 0.2, 0.5):
        runs = np.array([vote_accuracy(vectors, categories, share, seed, args.min_confidence) for seed in args.seeds])
        mean = runs.mean(axis=0)
        print(f"tagged {share:4.0%}: top-1 accuracy {mean[0]:.3f}; with confidence >= {args.min_confidence:g}: "
              f"accuracy {mean[1]:.3f}, coverage {mean[2]:.3f} (mean of seeds {', '.join(map(str, args.seeds))})")
    overall, per = cold_start_accuracy(local, categories)
    print(f"cold start (ImageNet head -> WordNet words -> category): accuracy {overall:.3f} ("
          + ", ".join(f"{name} {value:.3f}" for name, value in per.items()) + ")")
    if args.scale:
        seconds, peak, suggested = at_scale(vectors, args.scale, 0.2)
        print(f"{args.scale:,} vectors, 20% tagged: suggested tags for {suggested:,} images in {seconds:.1f} s "
              f"({suggested / seconds:,.0f} images/s), peak memory {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
