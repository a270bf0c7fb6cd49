#!/usr/bin/env python3
"""Compare descriptor recipes for EfficientNet-Lite0 on copy detection, in one process.

Every variant is computed from the same forward pass over the gallery and the edited queries
(the edits of ../shared/bench/attacks.py, as copy_detection.py makes them), then searched
exactly. It prints recall@1, recall@10 and category precision@10 per seed, so that a choice of
pooling, layer or normalisation can be compared side by side. No Django, no database.

The last two rows are what search does on top of the last-block vector: the query's mirror
image is searched too (an image keeps its better cosine), and then the best candidates are
re-ranked by matching the positions of the stride-16 feature map (core.rerank). They cost a
second forward pass per query, and nothing at import.

    .venv/bin/python bench/descriptor_variants.py [--seeds 1 2 3] [--queries 600]
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core import rerank  # noqa: E402
from core.efficientnet_lite import STRIDE_16_DEPTH, efficientnet_lite0  # noqa: E402
from core.embedding import gem  # noqa: E402

NORMALISATIONS = {
    "[-1, 1]": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def prepare(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))


@torch.inference_mode()
def features(model, arrays: list[np.ndarray], mean, std,
             batch: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature maps of the stride-16 stage, of the last inverted-residual block and of the head."""
    mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(std).view(1, -1, 1, 1) * 255
    finer, blocks, heads = [], [], []
    for i in range(0, len(arrays), batch):
        x = torch.from_numpy(np.stack(arrays[i:i + batch])).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        stride_16 = model.features[:STRIDE_16_DEPTH](x)
        block = model.features[STRIDE_16_DEPTH:-1](stride_16)
        finer.append(stride_16)
        blocks.append(block)
        heads.append(model.features[-1](block))
    return torch.cat(finer), torch.cat(blocks), torch.cat(heads)


def variants(block: torch.Tensor, head: torch.Tensor) -> dict[str, np.ndarray]:
    out = {
        "head, average pooling (1280)": head.mean(dim=(2, 3)),
        "head, GeM p=3 (1280)": gem(head, 3.0),
        "last block, GeM p=3 of both signs (640)": torch.cat([gem(block, 3.0), gem(-block, 3.0)], dim=1),
    }
    return {name: F.normalize(v, dim=1).numpy() for name, v in out.items()}


def searched_with_mirror_and_reranked(block: torch.Tensor, mirrored: torch.Tensor, finer: torch.Tensor,
                                      mirrored_finer: torch.Tensor, gallery_finer: torch.Tensor,
                                      gallery_vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Scores (queries x gallery) of the last two rows; only the order of the scores matters."""
    def signed_gem(x: torch.Tensor) -> np.ndarray:
        return F.normalize(torch.cat([gem(x, 3.0), gem(-x, 3.0)], dim=1), dim=1).numpy()

    def local(x: torch.Tensor) -> list[np.ndarray]:
        return [rerank.local_descriptors(m.flatten(1).T.numpy(), signed=True) for m in x]

    best = np.maximum(signed_gem(block) @ gallery_vectors.T, signed_gem(mirrored) @ gallery_vectors.T)
    reranked = best.copy()
    gallery_local = np.stack(local(gallery_finer))
    for row, views in enumerate(zip(local(finer), local(mirrored_finer), strict=True)):
        top = np.argsort(-best[row])[:rerank.RERANK_CANDIDATES]
        order = rerank.rerank([(int(j), float(best[row, j])) for j in top], query_views=views,
                              local_of={int(j): gallery_local[j] for j in top})
        # Above every other score, in the re-ranked order.
        for rank, (j, _) in enumerate(order):
            reranked[row, j] = 10.0 - rank
    return {"last block, query and its mirror (640)": best,
            "last block, query and its mirror, re-ranked (640)": reranked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    bench = Path(args.bench)
    sys.path.insert(0, str(bench))
    from attacks import attack

    model = efficientnet_lite0().to(memory_format=torch.channels_last)
    files = sorted(p for p in (bench / "images").rglob("*.jpg"))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    category = [p.parent.name for p in files]
    gallery_arrays = [prepare(Image.open(p), args.size) for p in files]
    started = time.perf_counter()
    gallery, gallery_finer = {}, {}
    for norm, stats in NORMALISATIONS.items():
        finer, block, head = features(model, gallery_arrays, *stats)
        gallery[norm], gallery_finer[norm] = variants(block, head), finer
    rate = 2 * len(files) / (time.perf_counter() - started)
    print(f"gallery: {len(files)} images, model at {args.size}px: {rate:.1f} images/s "
          f"({torch.get_num_threads()} threads, both layers)")
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for seed in args.seeds:
        rng = random.Random(seed)
        picks = rng.sample(range(len(files)), min(args.queries, len(files)))
        query_arrays = [prepare(attack(Image.open(files[i]), rng)[0], args.size) for i in picks]
        for norm, stats in NORMALISATIONS.items():
            finer, block, head = features(model, query_arrays, *stats)
            scores = {name: q @ gallery[norm][name].T for name, q in variants(block, head).items()}
            if norm == "[-1, 1]":
                mirrored_finer, mirrored, _ = features(model, [a[:, ::-1].copy() for a in query_arrays], *stats)
                scores |= searched_with_mirror_and_reranked(
                    block, mirrored, finer, mirrored_finer, gallery_finer[norm],
                    gallery[norm]["last block, GeM p=3 of both signs (640)"])
            for name, score in scores.items():
                top = np.argsort(-score, axis=1)[:, :10]
                hits = [[digest[j] == digest[i] for j in row] for i, row in zip(picks, top, strict=True)]
                r1 = np.mean([h[0] for h in hits])
                r10 = np.mean([any(h) for h in hits])
                p10 = np.mean([np.mean([category[j] == category[i] for j in row]) for i, row in zip(picks, top,
                                                                                                   strict=True)])
                rows.setdefault((name, norm), []).append((float(r1), float(r10), float(p10)))
    print(f"\n{'descriptor':50} {'input':9} " + " ".join(f"{'seed ' + str(s):>22}" for s in args.seeds)
          + f" {'mean r@1':>9}")
    print(f"{'':50} {'':9} " + " ".join(f"{'r@1   r@10  p@10':>22}" for _ in args.seeds))
    for (name, norm), values in rows.items():
        cells = " ".join(f"{r1:>10.3f} {r10:.3f} {p10:.3f}" for r1, r10, p10 in values)
        print(f"{name:50} {norm:9} {cells} {np.mean([v[0] for v in values]):>9.3f}")


if __name__ == "__main__":
    main()
