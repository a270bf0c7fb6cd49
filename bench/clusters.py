#!/usr/bin/env python3
"""How well Browse's clusters follow the shared gallery's categories, and what clustering a large
gallery costs. No Django.

Quality: the 2,698 photos of ../shared/bench/images (five folders: apparel, cat, dog, monkey,
squirrel) embedded with the site's embedder as gallery images (vectors cached, in the cache of
``bench/tag_suggestions.py``), clustered by ``search.kmeans.fit`` as the job does (batches of 2,000
in file order, so folder after folder, as an import reaches the database), each image assigned to its
nearest centroid; purity (the share of images in their cluster's majority folder) and NMI (normalised
mutual information, arithmetic mean of the entropies) against the folders, for several k (5, the
folders; and the job's own count, sqrt(n / 2)), over seeds.

Scale (``--scale N``): a separate process clusters N synthetic vectors resampled from the real ones
(each a random blend of two, with a little noise), made batch by batch on the fly the same each pass, so
that nothing holds them all, as the job reads them from the database a page at a time; with the job's
count for N (capped at 100), the job's batch size and sample. Its time (and, apart, the time of one
pass that only makes the batches, included in the total once per pass) and peak resident memory.

    .venv/bin/python bench/clusters.py [--seeds 0 1 2] [--k 5 37] [--scale 100000 1000000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from search import kmeans  # noqa: E402

JOB_BATCH = 2000  # search.clusters.BATCH, without importing Django


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    return sum(int(np.bincount(truth[labels == c]).max()) for c in np.unique(labels)) / len(labels)


def nmi(labels: np.ndarray, truth: np.ndarray) -> float:
    """Normalised mutual information, I(L; T) / ((H(L) + H(T)) / 2)."""
    _, a = np.unique(labels, return_inverse=True)
    _, b = np.unique(truth, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())

    def entropy(p: np.ndarray) -> float:
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    denominator = (entropy(pa) + entropy(pb)) / 2
    return mutual / denominator if denominator else 1.0


def quality(vectors: np.ndarray, truth: np.ndarray, k: int, seed: int) -> tuple[float, float, int]:
    fitted = kmeans.fit(lambda: (vectors[i:i + JOB_BATCH] for i in range(0, len(vectors), JOB_BATCH)), k, seed=seed)
    labels, _ = fitted.assign(vectors)
    return purity(labels, truth), nmi(labels, truth), int(np.bincount(labels).max())


def resampled(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors, each a random blend of two real ones with a little noise. Made here rather than
    with bench/index_scale.py's ``mixed``, whose module imports torch into the process measured."""
    share = rng.random((n, 1), dtype=np.float32)
    blend = share * real[rng.integers(len(real), size=n)] + (1 - share) * real[rng.integers(len(real), size=n)]
    noise = rng.standard_normal(blend.shape, dtype=np.float32)
    return kmeans.normalised(blend + noise * (0.1 / np.linalg.norm(noise, axis=1, keepdims=True)))


def child(count: int, cache: Path, seed: int) -> None:
    """Cluster ``count`` mixed vectors made on the fly; print time and memory as JSON. It reads only the
    cached vectors and imports no model code, so that its memory is the clustering's."""
    real = np.load(cache)["vectors"].astype(np.float32)

    def batches():
        for index, start in enumerate(range(0, count, JOB_BATCH)):
            yield resampled(real, min(JOB_BATCH, count - start), np.random.default_rng([seed, index]))

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    for _ in batches():
        pass
    making = time.perf_counter() - started
    k = kmeans.cluster_count(count)
    started = time.perf_counter()
    fitted = kmeans.fit(batches, k, seed=seed)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sizes = np.zeros(k, dtype=np.int64)
    for batch in batches():
        labels, _ = fitted.assign(batch)
        sizes += np.bincount(labels, minlength=k)
    assign_seconds = time.perf_counter() - started
    print(json.dumps({"count": count, "k": k, "fit_s": fit_seconds, "assign_s": assign_seconds, "making_s": making,
                      "passes": kmeans.EPOCHS + 2, "largest": int(sizes.max()), "empty": int((sizes == 0).sum()),
                      "base_mib": base, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, nargs="+", default=None, help="cluster counts (default: 5 and the job's)")
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="also time clustering this many vectors")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.cache, args.seeds[0])
        return
    # First: a child's peak memory starts from its parent's at the fork (Linux keeps ru_maxrss across
    # exec), so they start before this process loads the gallery's vectors and feature maps.
    for count in args.scale:
        out = subprocess.run([sys.executable, __file__, "--child", str(count), "--cache", str(args.cache),
                              "--seeds", str(args.seeds[0])], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['count']:,} vectors, k={r['k']}: fit {r['fit_s']:.1f} s + assign {r['assign_s']:.1f} s "
              f"({r['passes']} passes, each including {r['making_s']:.1f} s to make the synthetic batches); "
              f"peak RSS {r['peak_mib']:.0f} MiB ({r['base_mib']:.0f} MiB before); largest cluster "
              f"{r['largest']:,}, {r['empty']} empty")
    from bench.tag_suggestions import describe_gallery

    vectors, _, categories = describe_gallery(args.images, args.cache)
    vectors = vectors.astype(np.float32)
    names = sorted(set(categories))
    truth = np.array([names.index(c) for c in categories])
    print(f"{len(vectors)} images in {len(names)} folders ({', '.join(names)}), seeds {args.seeds}")
    for k in args.k or [len(names), kmeans.cluster_count(len(vectors))]:
        runs = [quality(vectors, truth, k, seed) for seed in args.seeds]
        p, n, largest = (np.array([r[i] for r in runs]) for i in range(3))
        print(f"k={k:3d}: purity {p.mean():.3f} ({p.min():.3f}-{p.max():.3f}), NMI {n.mean():.3f} "
              f"({n.min():.3f}-{n.max():.3f}), largest cluster {int(largest.max())} images")


if __name__ == "__main__":
    main()
