#!/usr/bin/env python3
"""The index work behind reindexing, the near-duplicate scan and the health check, at gallery
scale, on synthetic vectors. No Django, no database: it times the index code those jobs run.

It makes N unit vectors in clusters (like photos of a few subjects), plants near-duplicate
pairs (a vector and a slightly perturbed copy), then measures on this machine in one run:
  build    adding all vectors to a fresh HnswIndex in batches of 256 (a reindex's build step);
  publish  writing the snapshot with checksums, and loading it back (what readers do);
  scan     searching every vector's nearest neighbours, in batches of 512 (the duplicate scan),
           and how many planted pairs came out above the threshold;
  recall   top-1-is-itself and recall@10 against exact search on a sample (the health check).

    .venv/bin/python bench/index_upkeep.py [--vectors 100000] [--dim 640] [--pairs 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.identity import IndexIdentity  # noqa: E402
from core.index import HnswIndex, HnswParams, SnapshotStore, exact_search  # noqa: E402

NEIGHBOURS = 17  # the scan's 16 neighbours plus the image itself
THRESHOLD = 0.95


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_vectors(n: int, dim: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(max(1, n // 500), dim))
    vectors = unit(centres[rng.integers(0, len(centres), n)] + 1.2 * rng.normal(size=(n, dim)))
    # The last ``pairs`` rows are near-copies of the first ``pairs`` rows.
    vectors[n - pairs:] = unit(vectors[:pairs] + 0.15 * rng.normal(size=(pairs, dim)) / np.sqrt(dim))
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    n = args.vectors
    rng = np.random.default_rng(0)
    vectors = make_vectors(n, args.dim, args.pairs, rng)
    ids = np.arange(1, n + 1, dtype=np.int64)
    identity = IndexIdentity("synthetic", "bench", args.dim)
    rows: list[tuple[str, str]] = []

    started = time.perf_counter()
    index = HnswIndex(identity, HnswParams(), capacity=int(n * 1.25) + 16)
    for start in range(0, n, 256):
        index.upsert(ids[start:start + 256], vectors[start:start + 256])
    took = time.perf_counter() - started
    rows.append(("build (M=16, ef_construction=200)", f"{took:.1f} s, {n / took:,.0f} vectors/s"))

    with tempfile.TemporaryDirectory() as folder:
        store = SnapshotStore(Path(folder))
        started = time.perf_counter()
        meta = store.publish(index, applied_seq=1)
        publish = time.perf_counter() - started
        started = time.perf_counter()
        store.load(meta, HnswParams())
        load = time.perf_counter() - started
        size = sum(int(f["bytes"]) for f in meta.files.values())
    rows.append(("publish snapshot / load it", f"{publish:.2f} s / {load:.2f} s ({size / 2**20:,.0f} MiB)"))

    started = time.perf_counter()
    above: set[tuple[int, int]] = set()
    for start in range(0, n, 512):
        labels, scores = index.search(vectors[start:start + 512], NEIGHBOURS)
        for row, (row_labels, row_scores) in enumerate(zip(labels, scores, strict=True)):
            own = int(ids[start + row])
            above.update((min(own, int(o)), max(own, int(o))) for o, s in zip(row_labels, row_scores, strict=True)
                         if o != own and s >= THRESHOLD)
    took = time.perf_counter() - started
    planted = {(int(ids[i]), int(ids[n - args.pairs + i])) for i in range(args.pairs)}
    rows.append(("duplicate scan, k=17 for every vector", f"{took:.1f} s, {n / took:,.0f} queries/s"))
    rows.append((f"planted pairs found at >= {THRESHOLD}", f"{len(planted & above)} of {len(planted)} "
                                                           f"({len(above - planted)} other pairs above)"))

    sample = rng.choice(n, size=min(args.sample, n), replace=False)
    started = time.perf_counter()
    approx, _ = index.search(vectors[sample], 10)
    exact, _ = exact_search(vectors[sample], ids, vectors, 10)
    took = time.perf_counter() - started
    top1 = float(np.mean(approx[:, 0] == ids[sample]))
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]))
    rows.append((f"recall check on {len(sample)} (ef_search=128)",
                 f"top-1 itself {top1:.3f}, recall@10 {recall:.3f}, {took:.1f} s"))

    print(f"{n:,} vectors of {args.dim} dimensions, {args.pairs} planted near-duplicate pairs\n")
    print("| step | result |\n| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
