#!/usr/bin/env python3
"""How well the outlier score finds unusual uploads, and what scoring a large gallery costs. No Django.

Separation: the 2,698 photos of ../shared/bench/images plus 50 pictures of kinds the gallery lacks,
drawn here (line drawings, text screenshots, noise, flat geometric shapes; a mix), all embedded
with the site's embedder as gallery images (vectors cached, the photos' in the cache of
``bench/tag_suggestions.py``). The score is ``core.knn_outliers``: the cosine distance to the
k-th nearest other image, as a percentile among the gallery's. It reports the ROC AUC of telling
the 50 from the photos, for several k, two ways:

- job: all 2,748 images scored among each other, as the background job does once they are all in;
- upload: each of the 50 scored against the photos alone, as when it is embedded (the photos'
  scores then make the reference), so the 50 never neighbour each other.

Scale (``--scale N``): N synthetic vectors mixed from the real ones (as ``bench/index_scale.py``
--vectors mixed; with ``--scale-only``, clustered random unit vectors of the same dimension) in an
HNSW snapshot; a separate process loads it with an ``IndexReader`` and
scores every vector as the job does (``kth_distances`` in batches through the reader, then
percentiles), reading the query vectors in batches from a file; its time and peak memory.

    .venv/bin/python bench/outliers.py [--scale 100000 [--scale-only]] [--k 1 3 5 10 20]
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.index_scale import mixed  # noqa: E402
from bench.tag_suggestions import describe_gallery  # noqa: E402
from core.backbones import descriptor_identity, get_backbone  # noqa: E402
from core.index import HnswIndex, HnswParams, SnapshotStore  # noqa: E402
from core.knn_outliers import K, kth_distances, percentile_scores, share_below  # noqa: E402
from core.reader import Change, IndexReader  # noqa: E402

KINDS = ("drawing", "text", "noise", "shapes")
WORDS = ("invoice total due date account settings profile save cancel error warning loading search results "
         "page next previous download terms privacy help contact login password username").split()


def odd_picture(kind: str, rng: random.Random) -> Image.Image:
    """A picture of a kind that the photo gallery does not hold."""
    size = (rng.choice((480, 640, 800)), rng.choice((360, 480, 600)))
    if kind == "noise":
        pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        return Image.fromarray(pixels)
    background = (255, 255, 255) if kind != "shapes" else tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    if kind == "drawing":
        for _ in range(rng.randrange(6, 20)):
            points = [(rng.randrange(size[0]), rng.randrange(size[1])) for _ in range(rng.randrange(2, 6))]
            draw.line(points, fill=(0, 0, 0), width=rng.randrange(2, 6), joint="curve")
        for _ in range(rng.randrange(1, 5)):
            x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randrange(10, 80)
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 0, 0), width=3)
    elif kind == "text":
        font = ImageFont.load_default(size=rng.choice((14, 18, 22)))
        draw.rectangle((0, 0, size[0], 28), fill=(60, 60, 70))
        y = 40
        while y < size[1] - 20:
            draw.text((16, y), " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 10))), fill=(20, 20, 20),
                      font=font)
            y += rng.randrange(24, 40)
    else:
        for _ in range(rng.randrange(3, 12)):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            w, h = rng.randrange(20, 200), rng.randrange(20, 200)
            colour = tuple(rng.randrange(256) for _ in range(3))
            shape = rng.choice((draw.rectangle, draw.ellipse))
            shape((x, y, x + w, y + h), fill=colour)
    return image


def describe_odd(count: int, cache: Path) -> tuple[np.ndarray, list[str]]:
    """Vectors of ``count`` odd pictures (kinds in turn) and their kinds (cached)."""
    if cache.exists():
        data = np.load(cache)
        return data["vectors"], list(data["kinds"])
    from core.embedding import Embedder

    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."))
    rng = random.Random(7)
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    vectors = embedder.describe([odd_picture(kind, rng) for kind in kinds], gallery=True).vectors
    np.savez(cache, vectors=vectors, kinds=np.array(kinds))
    return vectors, kinds


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The chance that a positive scores above a negative (ties count half)."""
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + ties / 2)


def kth_exact(queries: np.ndarray, gallery: np.ndarray, k: int, *, same: bool) -> np.ndarray:
    """Cosine distance of each query to its k-th nearest gallery vector (itself excluded when ``same``)."""
    similarities = queries @ gallery.T
    if same:
        np.fill_diagonal(similarities, -np.inf)
    return 1.0 - np.sort(similarities, axis=1)[:, -k]


def separation(photos: np.ndarray, odd: np.ndarray, kinds: list[str], k: int) -> tuple[float, float, dict[str, float]]:
    """(AUC as the job scores, AUC as at upload, upload AUC per kind)."""
    everything = np.concatenate([photos, odd])
    scores = percentile_scores(kth_exact(everything, everything, k, same=True))
    job = roc_auc(scores[len(photos):], scores[:len(photos)])
    photo_distances = kth_exact(photos, photos, k, same=True)
    photo_scores = percentile_scores(photo_distances)
    ordered = np.sort(photo_distances)
    odd_scores = np.asarray(share_below(np.searchsorted(ordered, kth_exact(odd, photos, k, same=False)), len(photos)))
    upload = roc_auc(odd_scores, photo_scores)
    per = {kind: roc_auc(odd_scores[[c == kind for c in kinds]], photo_scores) for kind in KINDS}
    return job, upload, per


class NoChanges:
    """A change source with nothing after the snapshot: the reader searches the snapshot alone."""

    def changes_after(self, seq: int, limit: int | None = None) -> list[Change]:
        return []

    def vectors(self, image_ids: object) -> dict[int, np.ndarray]:
        return {}


def clustered(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 2,000 random centres: a gallery of many small neighbourhoods."""
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((count, dim)).astype(np.float32)
    vectors = centres[rng.integers(len(centres), size=count)] + noise * (0.6 / np.linalg.norm(noise, axis=1,
                                                                                              keepdims=True))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_snapshot(real: np.ndarray | None, count: int, folder: Path, ef_construction: int) -> Path:
    """Publish an HNSW snapshot of ``count`` vectors, mixed from the real ones when there are any and
    clustered random ones otherwise; the vectors go to a file."""
    identity = descriptor_identity(get_backbone("efficientnet_lite0"))
    rng = np.random.default_rng(0)
    vectors = mixed(real, count, rng) if real is not None else clustered(count, identity.dim, rng)
    params = HnswParams(ef_construction=ef_construction)
    graph = hnswlib.Index(space="ip", dim=identity.dim)
    graph.init_index(max_elements=count, M=params.m, ef_construction=params.ef_construction)
    graph.add_items(vectors, np.arange(count), num_threads=2)
    SnapshotStore(folder / "index").publish(HnswIndex(identity, params, graph=graph), applied_seq=0)
    np.save(folder / "vectors.npy", vectors)
    return folder


def peak_mib() -> float:
    """This process's peak resident memory. Not ``ru_maxrss``, which a child started by a big parent
    inherits across fork and exec; the kernel's high-water mark starts again with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def score_snapshot(folder: Path, k: int) -> None:
    """Score every vector of the snapshot as the job does; prints seconds and peak MiB (a child process)."""
    identity = descriptor_identity(get_backbone("efficientnet_lite0"))
    before = peak_mib()
    reader = IndexReader(SnapshotStore(folder / "index"), identity, HnswParams(), NoChanges())
    reader.refresh()
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    ids = np.arange(len(vectors))
    visible = set(ids.tolist())
    started = time.perf_counter()
    distances = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), 4096):
        found = kth_distances(reader, ids[start:start + 4096].tolist(), np.asarray(vectors[start:start + 4096]),
                              visible=lambda candidates: candidates & visible, k=k)
        distances[start:start + len(found)] = [found[i] for i in sorted(found)]
    scores = percentile_scores(distances)
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} {peak_mib():.0f} {before:.0f} "
          f"{scores.max():.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3, K, 10, 20])
    ap.add_argument("--odd", type=int, default=50)
    ap.add_argument("--scale", type=int, default=0, help="also time scoring this many vectors")
    ap.add_argument("--scale-only", action="store_true",
                    help="only the scale part, over clustered random vectors (no embedding)")
    ap.add_argument("--ef-construction", type=int, default=HnswParams.ef_construction,
                    help="of the scale part's index")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    ap.add_argument("--odd-cache", type=Path, default=Path("/tmp/outliers-bench-odd.npz"))
    ap.add_argument("--score-snapshot", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score_snapshot:
        return score_snapshot(args.score_snapshot, args.k[0])
    photos = None
    if not args.scale_only:
        photos, _, _ = describe_gallery(args.images, args.cache)
        odd, kinds = describe_odd(args.odd, args.odd_cache)
        print(f"{len(photos)} photos, {len(odd)} odd pictures ("
              + ", ".join(f"{kinds.count(k)} {k}" for k in KINDS) + ")")
        for k in args.k:
            job, upload, per = separation(photos, odd, kinds, k)
            print(f"k={k:2d}: ROC AUC job {job:.3f}, upload {upload:.3f} ("
                  + ", ".join(f"{kind} {value:.3f}" for kind, value in per.items()) + ")")
    if args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            build_snapshot(photos, args.scale, Path(tmp), args.ef_construction)
            print(f"built a snapshot of {args.scale:,} {'mixed' if photos is not None else 'clustered random'} "
                  f"vectors (ef_construction {args.ef_construction}) in {time.perf_counter() - started:.0f} s",
                  flush=True)
            out = subprocess.run([sys.executable, __file__, "--score-snapshot", tmp, "--k", str(K)], check=True,
                                 capture_output=True, text=True).stdout.split()
            seconds, peak, imported = float(out[0]), float(out[1]), float(out[2])
            print(f"{args.scale:,} vectors, k={K}: scored every one in {seconds:.1f} s "
                  f"({args.scale / seconds:,.0f} vectors/s); the scoring process peaked at {peak:,.0f} MiB, "
                  f"{peak - imported:,.0f} MiB above the {imported:,.0f} MiB it had after its imports")


if __name__ == "__main__":
    main()
