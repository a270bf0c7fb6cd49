#!/usr/bin/env python3
"""Resident memory of the site's processes with the default backbone and a 100,000-image index.

Each role runs in a fresh Python process that sets Django up (the project's settings, a
throw-away data directory), loads what that role loads, does its work once, and reports its
resident set (VmRSS) and peak (VmHWM) from /proc:

  web      the embedder and an index of ``--vectors`` vectors, then one search by picture;
  worker   the embedder only, then one batch of images embedded as gallery images (small view
           included): an embedding worker never loads the index (only the index writer task does);
  writer   the index only, as the index writer task holds it: no model.

The index's vectors are made as in bench/index_scale.py (real gallery descriptors and vectors
around them).

    .venv/bin/python bench/memory.py [--vectors 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from index_scale import real_descriptors, synthetic  # noqa: E402

from core.backbones import descriptor_identity, get_backbone  # noqa: E402
from core.index import HnswIndex, HnswParams  # noqa: E402

ROLE = """
import json, sys
from pathlib import Path
import django
django.setup()
from PIL import Image
role, index_dir, images = sys.argv[1], Path(sys.argv[2]), sorted(Path(sys.argv[3]).rglob("*.jpg"))[:8]
pictures = [Image.open(p).convert("RGB") for p in images]
if role in ("web", "worker"):
    from core.backbones import get_backbone
    from core.embedding import Embedder
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=Path("."))
    described = embedder.describe(pictures, gallery=role == "worker")
if role in ("web", "writer"):
    import hnswlib
    graph = hnswlib.Index(space="ip", dim=640)
    graph.load_index(str(index_dir / "index.hnsw"))
    graph.set_ef(128)
    if role == "web":
        graph.knn_query(described.vectors, k=30)
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
print(json.dumps({key: int(status[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lookalike-gallery-descriptors.npy"))
    parser.add_argument("--vectors", type=int, default=100_000)
    args = parser.parse_args()

    real = real_descriptors(Path(args.images), Path(args.cache))
    vectors = np.concatenate([real, synthetic(real, args.vectors - len(real), np.random.default_rng(0))])
    with tempfile.TemporaryDirectory(prefix="lookalike-memory-") as work:
        folder = Path(work)
        index = HnswIndex(descriptor_identity(get_backbone("efficientnet_lite0")), HnswParams(ef_construction=100),
                          capacity=len(vectors))
        index.upsert(np.arange(len(vectors)), vectors)
        index.save_to(folder)
        env = dict(os.environ, DATA_DIR=str(folder / "data"), DJANGO_SETTINGS_MODULE="config.settings.local")
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        print(f"index: {len(vectors):,} vectors of {vectors.shape[1]} dimensions, "
              f"{(folder / 'index.hnsw').stat().st_size / 2**20:.0f} MiB on disk")
        print(f"{'process':8} {'resident MiB':>13} {'peak MiB':>9}")
        for role in ("web", "worker", "writer"):
            out = subprocess.run([sys.executable, "-c", ROLE, role, str(folder), args.images], env=env, cwd=ROOT,
                                 check=True, capture_output=True, text=True).stdout
            memory = json.loads(out.strip().splitlines()[-1])
            print(f"{role:8} {memory['VmRSS']:>13} {memory['VmHWM']:>9}", flush=True)


if __name__ == "__main__":
    main()
