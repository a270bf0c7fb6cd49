#!/usr/bin/env python3
"""How fast the default backbone embeds images, on the CPU or a CUDA GPU. No Django.

It measures, on the same machine in one run:
  model     the embedder alone on already-resized 224 x 224 pixels, as for a gallery image
            (copy to the device, normalisation, the forward passes of the image and of its small
            view, pooling);
  pipeline  JPEG bytes in memory -> Pillow decode (reduced-scale draft) -> resize -> embedder,
            decoding in a thread pool (Pillow releases the GIL) while the device computes;
  gpu-jpeg  (CUDA only) JPEG bytes -> torchvision.io.decode_jpeg on the GPU -> resize on the
            GPU -> embedder, for comparison with the Pillow pipeline.
On a GPU it also checks that its bfloat16 descriptors agree with float32 ones from the CPU.

    .venv/bin/python bench/embed_throughput.py [--images ../shared/bench/images] [--device auto]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.backbones import get_backbone  # noqa: E402
from core.embedding import Embedder  # noqa: E402


def timed(label: str, count: int, run) -> float:
    run()  # warm-up: first CUDA kernels, allocator, cudnn autotuning
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - started)
    print(f"{label:10} {rate:10.1f} images/s", flush=True)
    return rate


def decode_and_prepare(embedder: Embedder, data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (embedder.recipe.input_size, embedder.recipe.input_size))
    return embedder.prepare(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 256 on a GPU")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument("--repeat", type=int, default=1, help="pass over the images this many times")
    args = parser.parse_args()

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    batch = args.batch or (256 if device.startswith("cuda") else 8)
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), device=device, batch_size=batch)
    files = sorted(Path(args.images).rglob("*.jpg"))[: args.limit]
    blobs = [p.read_bytes() for p in files] * args.repeat
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{len(blobs)} JPEG images, batch {batch}, {embedder.dtype}, {name}")

    prepared = [decode_and_prepare(embedder, blob) for blob in blobs[:batch * 4]]
    prepared = (prepared * (len(blobs) // len(prepared) + 1))[: len(blobs)]
    model_rate = timed("model", len(prepared), lambda: embedder.describe_prepared(prepared, gallery=True))

    workers = max(1, (os.cpu_count() or 1) - (0 if device == "cpu" else 1))

    def pillow_pipeline() -> None:
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(blobs), batch):
                chunk = list(pool.map(lambda b: decode_and_prepare(embedder, b), blobs[start:start + batch]))
                embedder.describe_prepared(chunk, gallery=True)

    pipeline_rate = timed("pipeline", len(blobs), pillow_pipeline)
    print(f"pipeline / model = {pipeline_rate / model_rate:.2f}")

    if device.startswith("cuda"):
        reference = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), device="cpu")
        sample = prepared[:64]
        agreement = np.sum(embedder.describe_prepared(sample, gallery=True).vectors
                           * reference.describe_prepared(sample, gallery=True).vectors, axis=1)
        print(f"{embedder.dtype} on the GPU vs float32 on the CPU: cosine min {agreement.min():.4f}, "
              f"mean {agreement.mean():.4f}")

        gpu_embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), device=device,
                                batch_size=batch, jpeg_decoder="torchvision")

        def gpu_pipeline() -> None:
            gpu_embedder.describe_jpegs(blobs, gallery=True)

        gpu_rate = timed("gpu-jpeg", len(blobs), gpu_pipeline)
        print(f"gpu-jpeg / model = {gpu_rate / model_rate:.2f}")


if __name__ == "__main__":
    main()
