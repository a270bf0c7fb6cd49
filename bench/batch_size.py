#!/usr/bin/env python3
"""The CPU forward pass at several batch sizes, taken in turns in one process, one torch thread
(as a worker process runs it), with memory kept for reuse (as every CPU embedder does).

Each round prints every batch size's rate and its ratio to the first. At the end it prints how
far the process's peak resident memory had grown after a first pass at each batch size (run
smallest first), over what it was with the model loaded: what a worker process keeps once it
has embedded a batch. No Django.

    .venv/bin/python bench/batch_size.py [--images ../shared/bench/images] [--count 96]
                                         [--batches 8 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.backbones import get_backbone  # noqa: E402
from core.embedding import Embedder  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), batch_size=args.batches[0])
    prepared = [embedder.prepare(Image.open(p)) for p in sorted(Path(args.images).rglob("*.jpg"))[: args.count]]
    growth = {}
    loaded = peak_mib()
    for batch in sorted(args.batches):
        embedder.batch_size = batch
        embedder.describe_prepared(prepared[:batch])
        growth[batch] = peak_mib() - loaded

    def rate(batch: int) -> float:
        embedder.batch_size = batch
        started = time.perf_counter()
        embedder.describe_prepared(prepared)
        return len(prepared) / (time.perf_counter() - started)

    print(f"{len(prepared)} images, one torch thread")
    for round_ in range(1, args.rounds + 1):
        rates = {batch: rate(batch) for batch in args.batches}
        first = rates[args.batches[0]]
        cells = (f"batch {batch} {value:6.1f} images/s ({value / first:.2f})" for batch, value in rates.items())
        print(f"round {round_}: " + "   ".join(cells))
    print("peak resident memory over the loaded model: "
          + ", ".join(f"batch {b} +{g:.0f} MiB" for b, g in growth.items()))


if __name__ == "__main__":
    main()
