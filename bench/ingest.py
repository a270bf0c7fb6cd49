#!/usr/bin/env python3
"""End-to-end import throughput against the bare model, measured side by side in one run.

  model       the embedder's forward passes alone (``describe_prepared``) on already-resized
              224 x 224 pixels, as for a gallery image (with its small view: search.backbones.Recipe),
              batch of ``LOOKALIKE_EMBED_BATCH_SIZE``, arranged as the worker is: on the CPU one
              process per core with one torch thread each, rates summed; on a GPU
              (``--device cuda``) one process, bfloat16;
  store       ``manage.py import_images FOLDER --recursive`` with no worker running: the import
              command's own work (reading, validating, the display copy and thumbnail, the
              database), which shares the machine with the workers during an import;
  import      ``manage.py import_images FOLDER --recursive --wait`` in a throw-away data
              directory, with the workers `manage.py serve` runs (one that embeds, with its
              default processes, and the index writer), timed once they are ready: reading,
              validating and storing each file, the display copy, the broker, decoding
              (JPEG draft), the forward pass, the database and the index writer;
  large       the same import for ``--large N`` 12-megapixel JPEGs (4000 x 3000, made by
              enlarging gallery images), where decoding dominates.

It prints images per second for each and import / model. The worker embeds on ``--device``
(``LOOKALIKE_DEVICE``) with ``--batch`` (``LOOKALIKE_EMBED_BATCH_SIZE``); the import command
stores with ``--jobs`` processes. The site uses SQLite and the embedded broker, or the broker
at ``--broker-url`` (a Redis database of its own: the run empties it first).

    .venv/bin/python bench/ingest.py [--images ../shared/bench/images] [--limit 800] [--large 40]
                                     [--device cpu|cuda] [--batch 8] [--jobs 1]
                                     [--broker-url redis://127.0.0.1:6379/15]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workers import stop_workers  # noqa: E402

from search.backbones import get_backbone  # noqa: E402
from search.embedding import Embedder  # noqa: E402

PYTHON = sys.executable


def _model_rate_in_one_process(files: list[Path], batch: int, device: str = "cpu") -> float:
    if device == "cpu":
        torch.set_num_threads(1)
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."), batch_size=batch, device=device)
    prepared = [embedder.prepare(Image.open(p)) for p in files]
    # Warm-up: on a GPU every batch shape (the last, shorter one too) costs a first-call set-up.
    embedder.describe_prepared(prepared if device != "cpu" else prepared[:batch], gallery=True)
    started = time.perf_counter()
    embedder.describe_prepared(prepared, gallery=True)
    return len(prepared) / (time.perf_counter() - started)


def model_rate(files: list[Path], batch: int, processes: int, device: str) -> float:
    if device != "cpu":
        return _model_rate_in_one_process(files, batch, device)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.starmap(_model_rate_in_one_process, [(files[i::processes], batch) for i in range(processes)]))


def store_rate(folder: Path, count: int, work: Path, env: dict[str, str], jobs: int) -> float:
    env = _fresh_site(work, env)
    started = time.perf_counter()
    subprocess.run([PYTHON, "manage.py", "import_images", str(folder), "--recursive", f"--jobs={jobs}"], env=env,
                   cwd=ROOT, check=True, capture_output=True)
    return count / (time.perf_counter() - started)


def _fresh_site(work: Path, env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(work / "data"), PYTHONUNBUFFERED="1")
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    if env.get("CELERY_BROKER_URL"):
        import redis

        redis.Redis.from_url(env["CELERY_BROKER_URL"]).flushdb()
    return env


def import_rate(folder: Path, count: int, work: Path, env: dict[str, str], jobs: int) -> float:
    """Timed from when the workers are ready (as `manage.py serve` runs them: one that embeds, one
    that keeps the index) until the import command has seen every image indexed."""
    env = _fresh_site(work, env)
    workers = {
        "embed": ["--queues=celery", "--hostname=embed@%h"],
        "index": ["--queues=celery-index", "--pool=solo", "--hostname=index@%h"],
    }
    logs = {name: work / f"{name}-worker.log" for name in workers}
    processes = []
    for name, options in workers.items():
        with logs[name].open("w") as log:
            processes.append(subprocess.Popen([PYTHON, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                                               *options], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    try:
        deadline = time.monotonic() + 300
        while not all(" ready." in path.read_text() for path in logs.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start; see {work}")
            time.sleep(0.2)
        started = time.perf_counter()
        subprocess.run([PYTHON, "manage.py", "import_images", str(folder), "--recursive", "--wait",
                        f"--jobs={jobs}"], env=env, cwd=ROOT, check=True, capture_output=True)
        return count / (time.perf_counter() - started)
    finally:
        stop_workers(processes, timeout=30)


def large_jpegs(files: list[Path], count: int, folder: Path) -> None:
    """12-megapixel photos: gallery images enlarged to 4000 x 3000, with grain so they compress like photos."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, path in enumerate(files[:count]):
        image = Image.open(path).convert("RGB").resize((4000, 3000), Image.Resampling.BILINEAR)
        grain = rng.integers(-6, 7, size=(3000, 4000, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        (folder / f"large-{i:04d}.jpg").write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--limit", type=int, default=None, help="import at most this many gallery images")
    parser.add_argument("--large", type=int, default=0, help="also import this many 12-megapixel JPEGs")
    parser.add_argument("--batch", type=int, default=int(os.environ.get("LOOKALIKE_EMBED_BATCH_SIZE") or 8))
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the model and the worker embed")
    parser.add_argument("--jobs", type=int, default=1, help="processes of the import command that store files")
    parser.add_argument("--broker-url", help="a Redis database for the broker (emptied first); default: embedded")
    args = parser.parse_args()
    env = dict(os.environ, LOOKALIKE_DEVICE=args.device, LOOKALIKE_EMBED_BATCH_SIZE=str(args.batch))
    env.pop("CELERY_BROKER_URL", None)
    if args.broker_url:
        env["CELERY_BROKER_URL"] = args.broker_url

    files = sorted(Path(args.images).rglob("*.jpg"))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="lookalike-ingest-"))
    try:
        subset = work / "gallery"
        subset.mkdir()
        for i, path in enumerate(files):
            shutil.copy(path, subset / f"{i:05d}-{path.name}")
        processes = os.cpu_count() or 1
        model = model_rate(files, args.batch, processes, args.device)
        arrangement = f"{processes} processes of one thread" if args.device == "cpu" else args.device
        print(f"model   {model:8.1f} images/s  ({len(files)} gallery images, batch {args.batch}, {arrangement})",
              flush=True)
        stored = store_rate(subset, len(files), work / "store", env, args.jobs)
        print(f"store   {stored:8.1f} images/s  (the import command alone, {args.jobs} jobs, no worker)", flush=True)
        imported = import_rate(subset, len(files), work / "small", env, args.jobs)
        print(f"import  {imported:8.1f} images/s  import / model = {imported / model:.2f}", flush=True)
        if args.large:
            large_jpegs(files, args.large, work / "large")
            rate = import_rate(work / "large", args.large, work / "large-run", env, args.jobs)
            print(f"large   {rate:8.1f} images/s  ({args.large} JPEGs of 12 megapixels, end to end)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
