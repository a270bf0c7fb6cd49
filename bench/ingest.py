#!/usr/bin/env python3
"""End-to-end import throughput against the bare model, measured side by side in one run.

  model       the embedder's forward passes alone (``describe_prepared``) on already-resized
              224 x 224 pixels, as for a gallery image (with its small view: core.backbones.Recipe),
              batch of ``LOOKALIKE_EMBED_BATCH_SIZE``, arranged as the worker is: on the CPU one
              process per core with one torch thread each, rates summed; on a GPU
              (``--device cuda``) one process, bfloat16;
  bare        a loop that reads each gallery file, hashes it with SHA-256 and writes it to the
              same disk: what any store step must do at least;
  store       ``manage.py import_images FOLDER --recursive`` with no worker running: the import
              command's own work (reading, hashing, the header checks, writing the original, the
              database), which shares the machine with the workers during an import;
  import      ``manage.py import_images FOLDER --recursive --wait`` in a throw-away data
              directory, with the workers `manage.py serve` runs (one that embeds, with its
              default processes, and the index writer), timed once they are ready: storing, the
              broker, the worker's one decode (JPEG draft) and thumbnail, the forward pass, the
              database and the index writer, until every image is searchable;
  large       the same import for ``--large N`` 12-megapixel JPEGs (4000 x 3000, quality 90, made
              by enlarging gallery images), where decoding dominates; then ``display``, the rate
              at which their display copies are made afterwards (a finer decode, queued behind
              the embeddings).

With ``--store-only`` it times only ``store``, ``--rounds`` times, each time between two runs
of ``bare`` (the disk of a shared machine changes speed from one second to the next: the ratio
takes the mean of the two), and also the import command over one file, ``start``: its fixed
cost (the interpreter, Django, the database and the broker). It prints store / bare with the
start included and after it ((N - 1) files / (time for N - time for one)), and the ratio of
CPU seconds (bare loop / the command's processes, after start-up; the database's and the
broker's CPU not counted), which waits on neither the disk nor the other programs. ``--tree``
times the import command of another checkout as well (e.g. a snapshot of the code before a
change, made with ``git archive``), in the same rounds, on the same files.

It prints images per second for each, import / model and store / bare. The worker embeds on
``--device`` (``LOOKALIKE_DEVICE``) with ``--batch`` (``LOOKALIKE_EMBED_BATCH_SIZE``); the
import command stores with ``--jobs`` processes. The site uses SQLite, or the PostgreSQL
database at ``--database-url`` (emptied before each run), and the embedded broker, or the
broker at ``--broker-url`` (a Redis database of its own: the run empties it first).

    .venv/bin/python bench/ingest.py [--images ../shared/bench/images] [--limit 800] [--large 40]
                                     [--device cpu|cuda] [--batch 8] [--jobs 1]
                                     [--database-url postgres://postgres@127.0.0.1:5432/ingest_bench]
                                     [--broker-url redis://127.0.0.1:6379/15]
    .venv/bin/python bench/ingest.py --store-only [--rounds 5] [--tree /tmp/before] [--jobs 1] ...
"""
from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workers import stop_workers  # noqa: E402

PYTHON = sys.executable


def _model_rate_in_one_process(files: list[Path], batch: int, device: str = "cpu") -> float:
    # Imported here: the store-only mode needs no model.
    import torch

    from core.backbones import get_backbone
    from core.embedding import Embedder

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


def bare_rate(files: list[Path], work: Path) -> float:
    """Read, hash and write each file to the same disk: the floor of any store step."""
    seconds, _ = bare_timed(files, work)
    return len(files) / seconds


def bare_timed(files: list[Path], work: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds of the bare loop over ``files``."""
    out = work / "bare"
    out.mkdir(parents=True)
    started, cpu = time.perf_counter(), time.process_time()
    for i, path in enumerate(files):
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        (out / f"{i:06d}").write_bytes(data)
    timed = time.perf_counter() - started, time.process_time() - cpu
    shutil.rmtree(out)
    return timed


def store_rate(folder: Path, count: int, work: Path, env: dict[str, str], jobs: int) -> float:
    seconds, _ = _store_timed(folder, work, env, jobs)
    return count / seconds


def _store_timed(folder: Path, work: Path, env: dict[str, str], jobs: int, tree: Path = ROOT) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of the command's processes, not the database's or the broker's)
    of ``import_images`` over ``folder`` into a fresh site."""
    env = fresh_site(work, env, tree)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([PYTHON, "manage.py", "import_images", str(folder), "--recursive", f"--jobs={jobs}"], env=env,
                   cwd=tree, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(work, ignore_errors=True)
    return elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def store_only(folder: Path, files: list[Path], work: Path, env: dict[str, str], jobs: int, rounds: int,
               trees: list[Path]) -> None:
    """Each tree's ``store`` over every file and over one (its start-up), with the bare loop run
    just before and just after, in each round: the disk of a shared machine changes speed from
    one second to the next, and the ratio takes the mean of the bare loop's two rates."""
    single = work / "single"
    single.mkdir()
    shutil.copy(files[0], single / files[0].name)
    gallery = sorted(folder.iterdir())
    count = len(gallery)
    ratios: dict[Path, dict[str, list[float]]] = {tree: {"store": [], "work": [], "cpu": [], "start": [],
                                                         "rate": []} for tree in trees}
    for round_ in range(rounds):
        line = f"round {round_ + 1}:"
        for i, tree in enumerate(trees):
            bare_before, bare_cpu = bare_timed(gallery, work)
            whole, whole_cpu = _store_timed(folder, work / f"store-{i}", env, jobs, tree)
            start, start_cpu = _store_timed(single, work / f"store-{i}", env, jobs, tree)
            bare_after, _ = bare_timed(gallery, work)
            bare = (count / bare_before + count / bare_after) / 2
            got = ratios[tree]
            got["store"].append(count / whole / bare)
            got["work"].append((count - 1) / max(whole - start, 1e-9) / bare)
            got["cpu"].append(bare_cpu / max(whole_cpu - start_cpu, 1e-9))
            got["start"].append(start)
            got["rate"].append(count / whole)
            line += (f" | tree {i}: bare {count / bare_before:6.0f} and {count / bare_after:6.0f} files/s, "
                     f"store {count / whole:6.1f}/s ({whole:.2f} s, start {start:.2f} s)")
        print(line, flush=True)
    for i, tree in enumerate(trees):
        got = ratios[tree]
        print(f"tree {i} ({tree}), {jobs} jobs, {count} files, medians of {rounds} rounds (range):")
        print(f"  store                  {statistics.median(got['rate']):7.1f} images/s; "
              f"start {statistics.median(got['start']):.2f} s")
        for key, what in (("store", "store / bare, start included"), ("work", "store / bare, after start-up"),
                          ("cpu", "bare CPU s / store CPU s, after start-up")):
            print(f"  {what:42s} {statistics.median(got[key]):5.2f}  ({min(got[key]):.2f}-{max(got[key]):.2f})")


def fresh_site(work: Path, env: dict[str, str], tree: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k != "REDIS_URL"}
    env.update(DATA_DIR=str(work / "data"), PYTHONUNBUFFERED="1")
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput"], env=env, cwd=tree, check=True,
                   capture_output=True)
    if env.get("DATABASE_URL"):
        subprocess.run([PYTHON, "manage.py", "flush", "--noinput"], env=env, cwd=tree, check=True,
                       capture_output=True)
    if env.get("CELERY_BROKER_URL"):
        import redis

        redis.Redis.from_url(env["CELERY_BROKER_URL"]).flushdb()
    return env


def import_rate(folder: Path, count: int, work: Path, env: dict[str, str], jobs: int,
                display: bool = False) -> tuple[float, float]:
    """Timed from when the workers are ready (as `manage.py serve` runs them: one that embeds and runs
    the background tasks, one that keeps the index) until the import command has seen every image
    indexed; with ``display``, also the rate until the last display copy exists."""
    env = fresh_site(work, env)
    # On a GPU, one process owns the device (README, "Sizing"); on the CPU, one per core.
    one_process = ["--concurrency=1"] if env.get("LOOKALIKE_DEVICE", "cpu") != "cpu" else []
    workers = {
        "embed": ["--queues=embed,background", "--hostname=embed@%h", *one_process],
        "index": ["--queues=index", "--pool=solo", "--hostname=index@%h"],
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
        searchable = time.perf_counter()
        if not display:
            return count / (searchable - started), 0.0
        while _display_copies(env) < count:
            time.sleep(0.5)
        return count / (searchable - started), count / (time.perf_counter() - started)
    finally:
        stop_workers(processes, timeout=30)


def _display_copies(env: dict[str, str]) -> int:
    out = subprocess.run([PYTHON, "manage.py", "shell", "-c",
                          "from gallery.models import Image; print(Image.objects.exclude(display='').count())"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def _large_jpeg(job: tuple[int, Path, Path]) -> None:
    i, path, folder = job
    rng = np.random.default_rng(i)
    image = Image.open(path).convert("RGB").resize((4000, 3000), Image.Resampling.BILINEAR)
    grain = rng.integers(-6, 7, size=(3000, 4000, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    (folder / f"large-{i:04d}.jpg").write_bytes(buffer.getvalue())


def large_jpegs(files: list[Path], count: int, folder: Path) -> None:
    """12-megapixel photos at quality 90: gallery images enlarged to 4000 x 3000, with grain so
    that they compress like photos; made on every core, before anything is timed."""
    folder.mkdir(parents=True)
    sources = [files[i % len(files)] for i in range(count)]
    with multiprocessing.get_context("spawn").Pool() as pool:
        pool.map(_large_jpeg, [(i, path, folder) for i, path in enumerate(sources)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--limit", type=int, default=None, help="import at most this many gallery images")
    parser.add_argument("--large", type=int, default=0, help="also import this many 12-megapixel JPEGs")
    parser.add_argument("--batch", type=int, default=int(os.environ.get("LOOKALIKE_EMBED_BATCH_SIZE") or 8))
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the model and the worker embed")
    parser.add_argument("--jobs", type=int, default=1, help="processes of the import command that store files")
    parser.add_argument("--broker-url", help="a Redis database for the broker (emptied first); default: embedded")
    parser.add_argument("--database-url", help="a PostgreSQL database (emptied before each run); default: SQLite")
    parser.add_argument("--store-only", action="store_true", help="time only the bare loop and the store step")
    parser.add_argument("--rounds", type=int, default=5, help="with --store-only, rounds of bare and store")
    parser.add_argument("--tree", action="append", default=[],
                        help="with --store-only, also the import command of this checkout (repeatable)")
    args = parser.parse_args()
    env = dict(os.environ, LOOKALIKE_DEVICE=args.device, LOOKALIKE_EMBED_BATCH_SIZE=str(args.batch))
    for name in ("CELERY_BROKER_URL", "DATABASE_URL"):
        env.pop(name, None)
    if args.broker_url:
        env["CELERY_BROKER_URL"] = args.broker_url
    if args.database_url:
        env["DATABASE_URL"] = args.database_url

    files = sorted(Path(args.images).rglob("*.jpg"))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="lookalike-ingest-"))
    try:
        subset = work / "gallery"
        subset.mkdir()
        for i, path in enumerate(files):
            shutil.copy(path, subset / f"{i:05d}-{path.name}")
        if args.store_only:
            trees = [Path(tree).resolve() for tree in args.tree] + [ROOT]
            store_only(subset, files, work, env, args.jobs, args.rounds, trees)
            return
        processes = os.cpu_count() or 1
        model = model_rate(files, args.batch, processes, args.device)
        arrangement = f"{processes} processes of one thread" if args.device == "cpu" else args.device
        print(f"model   {model:8.1f} images/s  ({len(files)} gallery images, batch {args.batch}, {arrangement})",
              flush=True)
        bare = bare_rate(files, work)
        print(f"bare    {bare:8.1f} files/s   (read, SHA-256, write to the same disk; one process)", flush=True)
        stored = store_rate(subset, len(files), work / "store", env, args.jobs)
        print(f"store   {stored:8.1f} images/s  (the import command alone, {args.jobs} jobs, no worker)  "
              f"store / bare = {stored / bare:.2f}", flush=True)
        imported, _ = import_rate(subset, len(files), work / "small", env, args.jobs)
        print(f"import  {imported:8.1f} images/s  import / model = {imported / model:.2f}", flush=True)
        if args.large:
            large_jpegs(files, args.large, work / "large")
            rate, display = import_rate(work / "large", args.large, work / "large-run", env, args.jobs, display=True)
            print(f"large   {rate:8.1f} images/s  ({args.large} JPEGs of 12 megapixels, end to end to searchable)  "
                  f"large / model = {rate / model:.2f}")
            print(f"display {display:8.1f} images/s  (until their display copies were made too, from the same start)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
