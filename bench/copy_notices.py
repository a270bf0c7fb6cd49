#!/usr/bin/env python3
"""How often an upload that is an edited copy of a gallery image is noticed, and how often an
unrelated upload is wrongly called one, on ../shared/bench/images. No Django.

Copies: ``--queries`` gallery images, each edited with one edit of ../shared/bench/attacks.py
(a crop, a rotation, a colour change, text...), embedded as the site embeds an upload
(``gallery=True``) and looked up as ``search.copy_notices`` does: its nearest gallery vector, a
notice when the similarity reaches the edited-copy threshold. Unrelated uploads: gallery images
left out of the gallery in turn (their byte-identical twins too), looked up among the others.

With ``--scale N``: the time of one lookup (the top-1 query of an upload's vector) in an HNSW index
of N vectors mixed from the real ones, and the peak memory of the process.

    .venv/bin/python bench/copy_notices.py [--queries 300] [--scale 100000] [--cache /tmp/tag-suggestions-bench.npz]
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "shared" / "bench"))
from attacks import attack  # noqa: E402

from bench.index_scale import mixed  # noqa: E402
from bench.tag_suggestions import describe_gallery  # noqa: E402
from core.backbones import get_backbone  # noqa: E402
from search.verdicts import CALIBRATED_THRESHOLDS  # noqa: E402

THRESHOLD = next(iter(CALIBRATED_THRESHOLDS.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--scale", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    args = ap.parse_args()
    vectors, _local, _categories = describe_gallery(args.images, args.cache)
    paths = sorted(args.images.rglob("*.jpg"))
    from core.embedding import Embedder

    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."))
    rng = random.Random(1)
    chosen = rng.sample(range(len(paths)), args.queries)
    edited = [attack(Image.open(paths[i]), rng, n_ops=1)[0] for i in chosen]
    copies = embedder.describe(edited, gallery=True).vectors
    scores = copies @ vectors.T
    best = scores.argmax(axis=1)
    noticed = (scores.max(axis=1) >= THRESHOLD) & (best == np.array(chosen))
    gram = vectors @ vectors.T
    np.fill_diagonal(gram, -2.0)
    # A byte-identical twin is the same picture: leave it out with the image.
    gram[gram >= 0.9999] = -2.0
    wrongly = (gram.max(axis=1) >= THRESHOLD).mean()
    print(f"edited copies (one edit each, {args.queries}): noticed as copies of their original {noticed.mean():.3f}; "
          f"unrelated uploads (each gallery image against the others): called a copy {wrongly:.3f} "
          f"(threshold {THRESHOLD})")
    if args.scale:
        data = mixed(vectors, args.scale, np.random.default_rng(0))
        index = hnswlib.Index(space="ip", dim=data.shape[1])
        index.init_index(max_elements=args.scale, M=16, ef_construction=100)
        index.add_items(data, np.arange(args.scale), num_threads=2)
        index.set_ef(256)
        times = []
        for query in copies:
            started = time.perf_counter()
            index.knn_query(query[None, :], k=1, num_threads=1)
            times.append(time.perf_counter() - started)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.scale:,} vectors: one lookup p50 {np.percentile(times, 50) * 1000:.2f} ms, "
              f"p99 {np.percentile(times, 99) * 1000:.2f} ms; peak memory {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
