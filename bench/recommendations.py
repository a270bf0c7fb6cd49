#!/usr/bin/env python3
"""How "You may also like" behaves, on ../shared/bench/images. No Django.

For a sample of gallery images, the site's recommendation (``search.recommendations``): the 60
nearest neighbours, less copies (similarity at or above the edited-copy threshold), picked by
maximal marginal relevance (``core.mmr``), against the plain 12 nearest. It reports the share of
recommendations in the image's category, how alike the 12 are to each other (mean pairwise
cosine: lower is more varied) and how many of the plain 12 are copies the recommendation leaves out.

With ``--scale N``: N synthetic vectors mixed from the real ones (as ``bench/index_scale.py``
--vectors mixed) in an HNSW index; the time of one recommendation (index search and MMR) and the
peak memory of the process.

    .venv/bin/python bench/recommendations.py [--sample 500] [--scale 100000] [--cache /tmp/tag-suggestions-bench.npz]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.index_scale import mixed  # noqa: E402
from bench.tag_suggestions import describe_gallery  # noqa: E402
from core.mmr import CANDIDATES, RECOMMENDED, mmr  # noqa: E402
from search.verdicts import CALIBRATED_THRESHOLDS  # noqa: E402

THRESHOLD = next(iter(CALIBRATED_THRESHOLDS.values()))


def recommend(scores: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> list[int]:
    keep = scores < THRESHOLD
    scores, ids = scores[keep], ids[keep]
    return [int(ids[i]) for i in mmr(scores.astype(np.float32), vectors[ids], RECOMMENDED)]


def mean_pairwise(vectors: np.ndarray) -> float:
    gram = vectors @ vectors.T
    n = len(vectors)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def on_gallery(vectors: np.ndarray, categories: list[str], sample: int) -> None:
    rng = np.random.default_rng(1)
    chosen = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    labels = np.array(categories)
    precision_plain, precision_mmr, alike_plain, alike_mmr, copies = [], [], [], [], []
    for i in chosen:
        scores = vectors @ vectors[i]
        scores[i] = -2.0
        order = np.argsort(-scores)[:CANDIDATES]
        plain = order[:RECOMMENDED]
        picked = recommend(scores[order], order, vectors)
        precision_plain.append(float((labels[plain] == labels[i]).mean()))
        precision_mmr.append(float((labels[picked] == labels[i]).mean()))
        alike_plain.append(mean_pairwise(vectors[plain]))
        alike_mmr.append(mean_pairwise(vectors[picked]))
        copies.append(int((scores[plain] >= THRESHOLD).sum()))
    print(f"{len(chosen)} images: same category {np.mean(precision_mmr):.3f} (plain top {RECOMMENDED}: "
          f"{np.mean(precision_plain):.3f}); mean pairwise cosine {np.mean(alike_mmr):.3f} (plain: "
          f"{np.mean(alike_plain):.3f}); copies left out per image {np.mean(copies):.3f}, "
          f"images with one or more {np.mean(np.array(copies) > 0):.3f}")


def at_scale(real: np.ndarray, count: int, queries: int) -> None:
    rng = np.random.default_rng(0)
    vectors = mixed(real, count, rng)
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=count, M=16, ef_construction=100)
    index.add_items(vectors, np.arange(count), num_threads=2)
    index.set_ef(256)
    times = []
    for i in rng.choice(count, size=queries, replace=False):
        started = time.perf_counter()
        labels, distances = index.knn_query(vectors[i:i + 1], k=CANDIDATES + 1, num_threads=1)
        keep = labels[0] != i
        recommend(1.0 - distances[0][keep], labels[0][keep].astype(np.int64), vectors)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{count:,} vectors: one recommendation p50 {np.percentile(times, 50) * 1000:.2f} ms, "
          f"p99 {np.percentile(times, 99) * 1000:.2f} ms over {queries} images; peak memory {peak:,.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--sample", type=int, default=500)
    ap.add_argument("--scale", type=int, default=0)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    args = ap.parse_args()
    vectors, _local, categories = describe_gallery(args.images, args.cache)
    on_gallery(vectors, categories, args.sample)
    if args.scale:
        at_scale(vectors, args.scale, args.queries)


if __name__ == "__main__":
    main()
