#!/usr/bin/env python3
"""What one vector costs in the index the site builds: snapshot bytes and resident memory. No Django.

For each size, random unit vectors of the default backbone's dimension (``--dim`` for another,
e.g. 256 for a PCA-reduced graph) are added to an ``HnswIndex`` at the site's M and
ef_construction, in batches of 10,000 on one thread, as the index writer adds them
(``search.index_writer.index_sync``); the index is published with ``SnapshotStore.publish`` and then
loaded by a fresh process, as a web process loads it. Reported per vector: the snapshot's bytes,
the writer's resident memory grown by the build, and the reader's grown by the load; also the
build, publish and load times. The graph's size does not depend on what the vectors hold, only
on their count, dimension and M; random vectors are the slowest to build, so the times are an
upper bound.

    .venv/bin/python bench/index_size.py [--sizes 100000] [--dim 640] [--m 16] [--ef-construction 200]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.backbones import descriptor_identity, get_backbone  # noqa: E402
from core.identity import IndexIdentity  # noqa: E402
from core.index import HnswIndex, HnswParams, SnapshotStore  # noqa: E402

BATCH = 10_000

# Run by a fresh interpreter: the resident memory a reader adds by loading the published snapshot.
_LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from core.index import HnswParams, SnapshotStore

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024

store = SnapshotStore(Path({folder!r}))
meta = store.read_meta()
before = rss()
started = time.perf_counter()
index = store.load(meta, HnswParams(m=meta.m, ef_construction=meta.ef_construction))
print(json.dumps({{"seconds": time.perf_counter() - started, "grown": rss() - before, "count": index.count}}))
"""


def rss() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) * 1024


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def measure(size: int, identity: IndexIdentity, params: HnswParams, folder: Path) -> dict[str, float]:
    rng = np.random.default_rng(size)
    before = rss()
    index = HnswIndex(identity, params)
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        count = min(BATCH, size - start)
        # Made batch by batch, so that the vectors themselves are not counted in the index's memory.
        index.upsert(np.arange(start, start + count), unit_vectors(rng, count, identity.dim))
    build = time.perf_counter() - started
    grown = rss() - before
    store = SnapshotStore(folder)
    meta = store.publish(index, applied_seq=size)
    snapshot = sum(int(entry["bytes"]) for entry in meta.files.values())
    loaded = json.loads(subprocess.run([sys.executable, "-c", _LOAD.format(root=str(ROOT), folder=str(folder))],
                                       check=True, capture_output=True, text=True).stdout)
    assert loaded["count"] == size, loaded
    return {"build": build, "writer": grown / size, "snapshot": snapshot / size, "publish": meta.publish_seconds,
            "capacity": index.capacity, "load": loaded["seconds"], "reader": loaded["grown"] / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = descriptor_identity(get_backbone("efficientnet_lite0"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=default.dim, help="vector dimension (default: the backbone's)")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    args = parser.parse_args()
    identity = IndexIdentity(default.backbone, default.backbone_version, args.dim)
    params = HnswParams(m=args.m, ef_construction=args.ef_construction)
    print(f"dim {args.dim} (float32 vector: {4 * args.dim:,} B), M={args.m}, ef_construction={args.ef_construction}, "
          "one build thread", flush=True)
    print("| vectors | build | snapshot per vector | writer RSS per vector | reader RSS per vector "
          "| publish | load in a fresh process |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="lookalike-index-size-") as folder:
            r = measure(size, identity, params, Path(folder))
        print(f"| {size:,} | {r['build']:.1f} s | {r['snapshot']:,.0f} B | {r['writer']:,.0f} B "
              f"(capacity {r['capacity']:,}) | {r['reader']:,.0f} B | {r['publish']:.2f} s | {r['load']:.2f} s |",
              flush=True)


if __name__ == "__main__":
    main()
