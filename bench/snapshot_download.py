#!/usr/bin/env python3
"""How long a reader on another host takes to pick up a new index snapshot from the object store:
poll the pointer, download the files into its cache, verify their checksums, load the index and
swap it in (``IndexReader.refresh`` over an ``ObjectSnapshotStore``). No Django, no database.

It builds an index of N random unit vectors of the default backbone's dimension (M=16, as the
site's; a low ef_construction only makes the build quicker, the files are the same size),
publishes it to a bucket of its own, then times R readers, each with an empty cache folder.
The store is the one the LOOKALIKE_S3_* variables name, e.g. the test gateway:

    env $(bin/ceph-gateway env) .venv/bin/python bench/snapshot_download.py [--vectors 100000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import boto3
import hnswlib
import numpy as np
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.backbones import descriptor_identity, get_backbone  # noqa: E402
from core.index import HnswIndex, HnswParams, ObjectSnapshotStore  # noqa: E402
from core.reader import Change, IndexReader  # noqa: E402

DEFAULT_BACKBONE = "efficientnet_lite0"


class NoChanges:
    """A change log with nothing after the snapshot: only the snapshot is timed."""

    def changes_after(self, seq: int, limit: int | None = None) -> list[Change]:
        return []

    def vectors(self, image_ids: Collection[int]) -> dict[int, np.ndarray]:
        return {}


def client() -> Any:
    return boto3.client(
        "s3", endpoint_url=os.environ.get("LOOKALIKE_S3_ENDPOINT_URL"),
        region_name=os.environ.get("LOOKALIKE_S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("LOOKALIKE_S3_ACCESS_KEY_ID"),
        aws_secret_access_key=os.environ.get("LOOKALIKE_S3_SECRET_ACCESS_KEY"),
        config=Config(signature_version="s3v4",
                      s3={"addressing_style": os.environ.get("LOOKALIKE_S3_ADDRESSING_STYLE", "auto")},
                      connect_timeout=2, read_timeout=20, retries={"total_max_attempts": 2, "mode": "standard"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    identity = descriptor_identity(get_backbone(DEFAULT_BACKBONE))
    params = HnswParams(m=16, ef_construction=200, ef_search=256)

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.vectors, identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    graph = hnswlib.Index(space="ip", dim=identity.dim)
    graph.init_index(max_elements=args.vectors, M=params.m, ef_construction=32)
    graph.add_items(vectors, np.arange(1, args.vectors + 1, dtype=np.int64), num_threads=os.cpu_count() or 1)
    index = HnswIndex(identity, params, graph=graph)
    print(f"{args.vectors} vectors of {identity.describe()} built in {time.perf_counter() - started:.1f} s",
          flush=True)

    s3 = client()
    bucket = f"bench-snapshots-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
            writer = ObjectSnapshotStore(s3, bucket, "index/bench/", Path(tmp) / "writer")
            meta = writer.publish(index, applied_seq=1)
            size = sum(int(f["bytes"]) for f in meta.files.values())
            print(f"published {size / 2**20:.1f} MiB in {meta.publish_seconds:.2f} s (save, checksums, upload)")
            refreshes, downloads, loads = [], [], []
            for run in range(args.runs):
                cache = Path(tmp) / f"reader-{run}"
                reader = IndexReader(ObjectSnapshotStore(s3, bucket, "index/bench/", cache), identity, params,
                                     NoChanges())
                t0 = time.perf_counter()
                reader.refresh()
                refreshes.append(time.perf_counter() - t0)
                assert reader.meta == meta and reader.total == args.vectors
                # The same again in its parts, with a fresh cache: download and verify, then load.
                parts = ObjectSnapshotStore(s3, bucket, "index/bench/", Path(tmp) / f"parts-{run}")
                t0 = time.perf_counter()
                parts._cached(meta)
                downloads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                parts.load(meta, params)
                loads.append(time.perf_counter() - t0)
                print(f"run {run + 1}: refresh {refreshes[-1]:.2f} s; download+verify {downloads[-1]:.2f} s, "
                      f"load from the cache (verify again + hnswlib) {loads[-1]:.2f} s", flush=True)
            print(f"median of {args.runs}: poll+download+verify+load+swap {statistics.median(refreshes):.2f} s "
                  f"({size / 2**20 / statistics.median(refreshes):.0f} MiB/s); download+verify "
                  f"{statistics.median(downloads):.2f} s; load {statistics.median(loads):.2f} s")
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


if __name__ == "__main__":
    main()
