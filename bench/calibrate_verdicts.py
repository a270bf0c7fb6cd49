#!/usr/bin/env python3
"""Calibrate the "edited copy" verdict: the similarity from which a search result is called an
edited copy of the query, for the descriptor and search the project runs now.

Like ../shared/bench/copy_detection.py, it drives the project through its commands in a
throw-away data directory (migrate, a worker, `import_images --wait` of the benchmark gallery,
then `search_image --json`) with edited copies of gallery images as queries (the edits of
../shared/bench/attacks.py: `--edits default`, three ordinary edits, as copy_detection.py makes
them; `hard`, one hard edit, as its `--edits hard` does; both by default). For each query it
takes the score of its original and the best score of any unrelated image. The threshold is the
score that only 1% of those best unrelated matches reach, over every query of every seed and
edit set; it prints it with the share of originals that reach it, per seed and edit set, and a
table of nearby thresholds. Put the value in search/verdicts.py (CALIBRATED_THRESHOLDS) under
the identity it prints.

    .venv/bin/python bench/calibrate_verdicts.py [--seeds 1 2 3] [--queries 600] [--edits default hard] [--keep DIR]

With --keep DIR, the imported gallery stays in DIR and a later run with the same DIR skips the
import.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(BENCH))
from attacks import attack, hard_attack  # noqa: E402
from workers import stop_workers  # noqa: E402

IMPOSTOR_RATE = 0.01
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def manage(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"manage.py {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def import_gallery(env: dict[str, str], images: Path, data_dir: Path) -> None:
    marker = data_dir / "calibration-gallery-imported"
    if marker.exists():
        return
    manage(env, "migrate", "--noinput")
    worker = subprocess.Popen([PYTHON, "-m", "celery", "-A", "config", "worker", "--loglevel=WARNING"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc = subprocess.run([PYTHON, "manage.py", "import_images", str(images), "--recursive", "--wait"], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:])
    finally:
        stop_workers([worker], timeout=60)
    marker.touch()


def search_edited(env: dict[str, str], files: list[Path], twins: dict[str, set[str]], data_dir: Path, *,
                  edits: str, seed: int, queries: int) -> tuple[list[float], list[float]]:
    """Per query of one seed and edit set: the score of its original and the best of any other image."""
    rng = random.Random(seed)
    picks = rng.sample(files, min(queries, len(files)))
    folder = data_dir / f"queries-{edits}-{seed}"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, source in enumerate(picks):
        path = folder / f"q{i:04d}.png"
        (hard_attack if edits == "hard" else attack)(Image.open(source), rng)[0].save(path)
        paths.append(str(path))
    output = manage(env, "search_image", *paths, "--k", "10", "--json")
    rows = {row["query"]: row for row in map(json.loads, filter(None, output.splitlines()))}
    originals, impostors = [], []
    for query, source in zip(paths, picks, strict=True):
        results = rows[query].get("results", [])
        truth = twins[source.name]
        originals.append(max((r["score"] for r in results if r["original_name"] in truth), default=-1.0))
        impostors.append(max((r["score"] for r in results if r["original_name"] not in truth), default=-1.0))
    return originals, impostors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(BENCH / "images"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--edits", choices=("default", "hard"), nargs="+", default=["default", "hard"])
    ap.add_argument("--keep", type=Path, default=None, help="data directory to keep (and reuse) the imported gallery")
    args = ap.parse_args()

    images = Path(args.images).resolve()
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    by_hash: dict[str, set[str]] = defaultdict(set)
    for path in files:
        by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].add(path.name)
    twins = {name: group for group in by_hash.values() for name in group}

    data_dir = (args.keep or Path(tempfile.mkdtemp(prefix="calibrate-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    import_gallery(env, images, data_dir)
    identity = manage(env, "shell", "-c", "from search.runtime import index_identity as i; print(i().backbone, "
                                          "i().backbone_version)").split()[-2:]
    print(f"descriptor: {identity}")

    originals, impostors = [], []
    by_set: dict[str, tuple[list[float], list[float]]] = {edits: ([], []) for edits in args.edits}
    for edits in args.edits:
        for seed in args.seeds:
            seed_originals, seed_impostors = search_edited(env, files, twins, data_dir, edits=edits, seed=seed,
                                                           queries=args.queries)
            threshold = float(np.quantile(seed_impostors, 1 - IMPOSTOR_RATE))
            print(f"{edits} edits, seed {seed}: threshold {threshold:.3f}, originals at or above it "
                  f"{np.mean(np.asarray(seed_originals) >= threshold):.3f}", flush=True)
            by_set[edits][0].extend(seed_originals)
            by_set[edits][1].extend(seed_impostors)
            originals += seed_originals
            impostors += seed_impostors

    originals_a, impostors_a = np.asarray(originals), np.asarray(impostors)
    threshold = float(np.quantile(impostors_a, 1 - IMPOSTOR_RATE))
    print(f"\nall seeds ({len(originals)} queries): threshold {threshold:.3f}; originals at or above it "
          f"{np.mean(originals_a >= threshold):.3f}, best unrelated match at or above it "
          f"{np.mean(impostors_a >= threshold):.3f}")
    for edits, (set_originals, set_impostors) in by_set.items():
        print(f"  {edits} edits ({len(set_originals)} queries): originals at or above it "
              f"{np.mean(np.asarray(set_originals) >= threshold):.3f}, best unrelated match at or above it "
              f"{np.mean(np.asarray(set_impostors) >= threshold):.3f}")
    print()
    print("| threshold | originals at or above | best unrelated match at or above |")
    print("| --- | --- | --- |")
    for t in sorted({round(round(threshold, 2) + d, 2) for d in (-0.04, -0.02, 0.0, 0.02, 0.04)}):
        print(f"| {t:.2f} | {np.mean(originals_a >= t):.3f} | {np.mean(impostors_a >= t):.3f} |")


if __name__ == "__main__":
    main()
