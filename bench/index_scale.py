#!/usr/bin/env python3
"""How the HNSW index behaves at 100,000 and 1,000,000 vectors of the default backbone. No Django.

Vectors: the default backbone's descriptors of the gallery images and of their mirror images
(real embeddings, 2 x 2,698), then synthetic ones made from them, in one of two ways
(``--vectors``); queries are further such vectors, not in the index:

  clustered   a real descriptor, plus 0.3 x another random real descriptor, plus Gaussian
              noise of norm 0.3, normalised: a cloud around each real image. At 1,000,000
              that is about 185 near-copies of every real image, whose order against a
              query differs by hundredths of a cosine: the hardest case for a graph index.
  mixed       a mix of three random real descriptors with random weights (uniform on the
              simplex), plus Gaussian noise of norm 0.1, normalised: vectors spread between
              real images rather than piled on them, closer to a collection of distinct photos.

For each size it reports the build time (hnswlib, ``--threads`` threads), memory per vector
(the saved index file), and for several ``ef`` the recall@10 against exact search over the
full vectors and the latency of single queries on one thread (p50, p99).

With ``--pca D`` the graph holds the vectors projected onto their top D principal directions
(uncentred, so that inner products are kept; fitted on 20,000 of the indexed vectors). Each
query then takes the graph's top ``--rerank`` candidates and re-ranks them exactly against the
full vectors, held in memory as float16; the latency includes the projection and the re-rank,
and memory per vector counts the float16 copy.

    .venv/bin/python bench/index_scale.py [--sizes 100000 1000000] [--m 16] [--ef-construction 100]
                                          [--vectors clustered|mixed] [--pca 256 --rerank 50]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.backbones import get_backbone  # noqa: E402
from core.embedding import Embedder  # noqa: E402


def real_descriptors(images: Path, cache: Path) -> np.ndarray:
    if cache.exists():
        return np.load(cache)
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."))
    pictures = [Image.open(p).convert("RGB") for p in sorted(images.rglob("*.jpg"))]
    vectors = np.concatenate([embedder.embed(pictures), embedder.embed([ImageOps.mirror(p) for p in pictures])])
    np.save(cache, vectors)
    return vectors


def synthetic(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        noise = rng.standard_normal((n, real.shape[1])).astype(np.float32)
        noise *= 0.3 / np.linalg.norm(noise, axis=1, keepdims=True)
        v = real[rng.integers(len(real), size=n)] + 0.3 * real[rng.integers(len(real), size=n)] + noise
        out[start:start + n] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def mixed(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        weights = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
        v = sum(weights[:, i:i + 1] * real[rng.integers(len(real), size=n)] for i in range(3))
        noise = rng.standard_normal((n, real.shape[1])).astype(np.float32)
        v += noise * (0.1 / np.linalg.norm(noise, axis=1, keepdims=True))
        out[start:start + n] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


GENERATORS = {"clustered": synthetic, "mixed": mixed}


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 200_000):
        scores = queries @ vectors[start:start + 200_000].T
        ids = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, ids, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, ids + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_ids = np.take_along_axis(merged_ids, keep, 1)
    return best_ids


def fit_projection(vectors: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The top ``dim`` directions of the vectors' second moment, as a (full dim x dim) matrix."""
    sample = vectors[rng.choice(len(vectors), size=min(20_000, len(vectors)), replace=False)].astype(np.float64)
    _, eigenvectors = np.linalg.eigh(sample.T @ sample)
    return np.ascontiguousarray(eigenvectors[:, ::-1][:, :dim], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lookalike-gallery-descriptors.npy"),
                        help="where the gallery's real descriptors are kept between runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=2, help="threads for building (queries use one)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--vectors", choices=GENERATORS, default="clustered", help="how synthetic vectors are made")
    parser.add_argument("--pca", type=int, default=0, help="dimension the graph holds (0: the full vectors)")
    parser.add_argument("--rerank", type=int, default=50, help="with --pca: candidates re-ranked exactly")
    args = parser.parse_args()

    real = real_descriptors(Path(args.images), Path(args.cache))
    rng = np.random.default_rng(0)
    generate = GENERATORS[args.vectors]
    queries = generate(real, args.queries, rng)
    layout = (f"graph of {args.pca} PCA dimensions, top {args.rerank} re-ranked against float16 full vectors"
              if args.pca else "graph of the full vectors")
    print(f"{len(real)} real descriptors of {real.shape[1]} dimensions; M={args.m}, "
          f"ef_construction={args.ef_construction}, build threads={args.threads}; {args.vectors} vectors; {layout}",
          flush=True)
    for size in args.sizes:
        vectors = np.concatenate([real, generate(real, size - len(real), rng)])
        truth = exact_top(vectors, queries, 10)
        projection = fit_projection(vectors, args.pca, rng) if args.pca else None
        full = vectors.astype(np.float16) if projection is not None else None
        graphed = vectors @ projection if projection is not None else vectors
        del vectors
        graph = hnswlib.Index(space="ip", dim=graphed.shape[1])
        graph.init_index(max_elements=size, M=args.m, ef_construction=args.ef_construction)
        started = time.perf_counter()
        graph.add_items(graphed, np.arange(size), num_threads=args.threads)
        build = time.perf_counter() - started
        del graphed
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "index.bin"
            graph.save_index(str(path))
            per_vector = path.stat().st_size / size + (2 * real.shape[1] if full is not None else 0)
        print(f"\n{size:,} vectors: build {build:.1f} s ({size / build:,.0f} vectors/s), "
              f"{per_vector:,.0f} bytes per vector ({per_vector / (4 * real.shape[1]):.2f} x the float32 vector)")
        print(f"{'ef':>5} {'recall@10':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for ef in sorted({max(ef, args.rerank) if full is not None else ef for ef in args.ef}):
            graph.set_ef(ef)
            latencies = []
            found = []
            for query in queries:
                started = time.perf_counter()
                if projection is not None and full is not None:
                    labels, _ = graph.knn_query((query @ projection)[None, :], k=args.rerank, num_threads=1)
                    exact = full[labels[0]].astype(np.float32) @ query
                    labels = labels[:, np.argsort(-exact)[:10]]
                else:
                    labels, _ = graph.knn_query(query[None, :], k=10, num_threads=1)
                latencies.append(time.perf_counter() - started)
                found.append(labels[0])
            recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
            p50, p99 = np.percentile(latencies, [50, 99]) * 1000
            print(f"{ef:>5} {recall:>10.3f} {p50:>8.2f} {p99:>8.2f}", flush=True)
        del graph, full


if __name__ == "__main__":
    main()
