#!/usr/bin/env python3
"""Re-ranking weights on the copy-detection queries, scored exactly from cached descriptors.

It describes the gallery as the site stores it (each image decoded, re-encoded as the display
copy, and embedded from that at reduced scale, as a gallery image: see core.backbones.Recipe)
and the edited queries of ../shared/bench/copy_detection.py (the same seeds draw the same images and edits; each query
in the framings a search by picture makes: core.query_views), once, into ``--cache``. Then for
every setting of ``--candidates``, ``--match-weight`` and ``--coherent-weight`` it searches
exactly (the best cosine of a query's views), re-ranks the best candidates with core.rerank, and
prints recall@1, recall@10 and category precision@10 per seed. No Django, no database.

    .venv/bin/python bench/rerank_weights.py [--seeds 1 2 3] [--candidates 60 100]
                                             [--match-weight 0.001] [--coherent-weight 0.003]
"""
from __future__ import annotations

import argparse
import io
import itertools
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core import rerank  # noqa: E402
from core.backbones import descriptor_identity, get_backbone  # noqa: E402
from core.imaging import decode_image, display_jpeg_pixels  # noqa: E402
from core.query_views import query_framings  # noqa: E402

UNLIMITED_PIXELS = 10**9


def describe_all(bench: Path, seeds: list[int], queries: int, cache: Path) -> None:
    from core.embedding import Embedder

    sys.path.insert(0, str(bench))
    from attacks import attack

    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), batch_size=16)
    files = sorted(p for p in (bench / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    started = time.perf_counter()
    vectors, maps = [], []
    for start in range(0, len(files), 32):
        pictures = []
        for path in files[start:start + 32]:
            # What the worker describes: the display copy's pixels, after its lossy save.
            pictures.append(display_jpeg_pixels(decode_image(path.read_bytes(), max_pixels=UNLIMITED_PIXELS).image))
        described = embedder.describe(pictures, gallery=True)
        vectors.append(described.vectors)
        maps.append(described.local)
    arrays = {"names": np.array([p.name for p in files]), "categories": np.array([p.parent.name for p in files]),
              "vectors": np.concatenate(vectors), "maps": np.concatenate(maps)}
    for seed in seeds:
        rng = random.Random(seed)
        picked = rng.sample(files, min(queries, len(files)))
        parts: dict[str, list[np.ndarray]] = {"vectors": [], "maps": [], "query": []}
        for start in range(0, len(picked), 16):
            views = []
            for row, source in enumerate(picked[start:start + 16], start=start):
                edited, _ = attack(Image.open(source), rng)
                buffer = io.BytesIO()
                edited.save(buffer, "PNG")
                framings = query_framings(decode_image(buffer.getvalue(), max_pixels=UNLIMITED_PIXELS).image)
                views += [view for pair in framings for view in pair]
                parts["query"].append(np.full(2 * len(framings), row))
            described = embedder.describe(views)
            parts["vectors"].append(described.vectors)
            parts["maps"].append(described.local)
        arrays |= {f"seed{seed}_{key}": np.concatenate(value) for key, value in parts.items()}
        arrays[f"seed{seed}_truth"] = np.array([p.name for p in picked])
    np.savez(cache, **arrays)  # type: ignore[arg-type]  # numpy types every keyword as allow_pickle's bool
    print(f"described {len(files)} gallery images and {len(seeds)} x {queries} queries in "
          f"{time.perf_counter() - started:.0f} s into {cache}")


def with_gallery_lookups(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cached arrays, plus what every setting's scoring reads of the gallery."""
    # Identical files in the gallery (identical descriptors) are the same original.
    first_of: dict[bytes, int] = {}
    for index, vector in enumerate(data["vectors"]):
        first_of.setdefault(vector.tobytes(), index)
    return data | {"original": np.array([first_of[v.tobytes()] for v in data["vectors"]]),
                   "unit_maps": np.stack([rerank.local_descriptors(m, signed=True) for m in data["maps"]])}


def score(data: dict[str, np.ndarray], seed: int, candidates: int) -> tuple[float, float, float]:
    categories, original, gallery_maps = data["categories"], data["original"], data["unit_maps"]
    index_of = {name: i for i, name in enumerate(data["names"])}
    view_query = data[f"seed{seed}_query"]
    view_cosines = data[f"seed{seed}_vectors"] @ data["vectors"].T
    hits1 = hits10 = 0
    precision = 0.0
    for row, truth in enumerate(data[f"seed{seed}_truth"]):
        of_row = np.flatnonzero(view_query == row)
        cosines = view_cosines[of_row].max(axis=0)
        top = np.argsort(-cosines)[:max(candidates, 10)]
        # As the site does: re-ranked with the framing (a view and its mirror) that found the closest image.
        pairs = of_row.reshape(-1, 2)
        closest = pairs[np.argmax(view_cosines[pairs].max(axis=(1, 2)))]
        views = [rerank.local_descriptors(data[f"seed{seed}_maps"][view], signed=True) for view in closest]
        head = rerank.rerank([(int(j), float(cosines[j])) for j in top[:candidates]], query_views=views,
                             local_of={int(j): gallery_maps[j] for j in top[:candidates]})
        ranked = [j for j, _ in head] + [int(j) for j in top[candidates:]]
        wanted = original[index_of[truth]]
        found = [original[j] == wanted for j in ranked[:10]]
        hits1 += found[0]
        hits10 += any(found)
        precision += np.mean([categories[j] == categories[index_of[truth]] for j in ranked[:10]])
    count = len(data[f"seed{seed}_truth"])
    return hits1 / count, hits10 / count, precision / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--queries", type=int, default=600)
    version = descriptor_identity(get_backbone("efficientnet_lite0")).backbone_version
    parser.add_argument("--cache", default=f"/tmp/lookalike-rerank-views-{re.sub(r'[^A-Za-z0-9.-]', '_', version)}.npz",
                        help="descriptors are read from here when it exists (made with the same --seeds and "
                             "--queries), else made and written here")
    parser.add_argument("--candidates", type=int, nargs="+", default=[rerank.RERANK_CANDIDATES])
    parser.add_argument("--match-weight", type=float, nargs="+", default=[rerank.MATCH_WEIGHT])
    parser.add_argument("--coherent-weight", type=float, nargs="+", default=[rerank.COHERENT_MATCH_WEIGHT])
    args = parser.parse_args()
    cache = Path(args.cache)
    if not cache.exists():
        describe_all(Path(args.bench), args.seeds, args.queries, cache)
    data = with_gallery_lookups(dict(np.load(cache)))
    print(f"{'candidates':>10} {'match':>6} {'coherent':>8} " + " ".join(f"{'seed ' + str(s):>20}" for s in args.seeds)
          + f" {'mean r@1':>9} {'mean r@10':>9} {'mean p@10':>9}")
    for candidates, match, coherent in itertools.product(args.candidates, args.match_weight, args.coherent_weight):
        rerank.MATCH_WEIGHT, rerank.COHERENT_MATCH_WEIGHT = match, coherent
        results = [score(data, seed, candidates) for seed in args.seeds]
        cells = " ".join(f"{r1:.3f} {r10:.3f} {p10:.3f}" for r1, r10, p10 in results)
        means = np.mean(results, axis=0)
        print(f"{candidates:>10} {match:>6g} {coherent:>8g} {cells} {means[0]:>9.3f} {means[1]:>9.3f} "
              f"{means[2]:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
