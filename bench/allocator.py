#!/usr/bin/env python3
"""The CPU forward pass with glibc's default handling of freed memory, and with the memory kept
for reuse (``core.allocator``, what every CPU embedder does), alternating in one process.

glibc's setting is process-wide and can be changed back and forth, so the two are measured in
turns on the same model and pixels, one torch thread (as a worker process runs it), and each
round prints both rates and their ratio. No Django.

    .venv/bin/python bench/allocator.py [--images ../shared/bench/images] [--count 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core import allocator  # noqa: E402
from core.backbones import get_backbone  # noqa: E402
from core.embedding import Embedder  # noqa: E402

# glibc's defaults: blocks from 128 KiB are mapped on their own and unmapped when freed.
GLIBC_DEFAULT_BYTES = 128 << 10


def set_thresholds(nbytes: int) -> None:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt(allocator._M_MMAP_THRESHOLD, nbytes)
    mallopt(allocator._M_TRIM_THRESHOLD, nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), batch_size=8)
    prepared = [embedder.prepare(Image.open(p)) for p in sorted(Path(args.images).rglob("*.jpg"))[: args.count]]
    embedder.describe_prepared(prepared[:8])

    def rate() -> float:
        started = time.perf_counter()
        embedder.describe_prepared(prepared)
        return len(prepared) / (time.perf_counter() - started)

    print(f"{len(prepared)} images, batch 8, one torch thread")
    for round_ in range(1, args.rounds + 1):
        set_thresholds(GLIBC_DEFAULT_BYTES)
        default = rate()
        set_thresholds(allocator._KEEP_BYTES)
        kept = rate()
        print(f"round {round_}: glibc default {default:6.1f} images/s   kept {kept:6.1f} images/s   "
              f"kept / default {kept / default:.2f}")


if __name__ == "__main__":
    main()
