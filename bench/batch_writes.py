#!/usr/bin/env python3
"""How a worker's batch writes its vectors on PostgreSQL: Django's ``bulk_create`` (one
multi-row INSERT ... ON CONFLICT DO UPDATE, what ``search.services.embeddings_store`` does)
against ``COPY`` into a temporary table followed by one INSERT ... SELECT ... ON CONFLICT,
measured in turns in one process, with rows of the real size (a 640-float vector and a
196 x 112 float16 feature map, about 45 kB).

Each round stores the same batch again (the upsert path of a re-embed) and a new batch (the
path of an import), in a transaction that also logs the change, as a batch does.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ingest_bench \\
        .venv/bin/python bench/batch_writes.py [--batch 8 128] [--rounds 20]

The database is migrated and emptied first: give it one of its own.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from gallery.models import Image  # noqa: E402
from search import changelog  # noqa: E402
from search.models import Embedding, IndexChange  # noqa: E402

BACKBONE, VERSION, DIM = "efficientnet_lite0", "bench", 640
rng = np.random.default_rng(0)


def rows(image_ids: list[int]) -> list[tuple[int, bytes, bytes]]:
    return [(image_id, rng.standard_normal(DIM).astype(np.float32).tobytes(),
             rng.standard_normal((196, 112)).astype(np.float16).tobytes()) for image_id in image_ids]


def with_bulk_create(batch: list[tuple[int, bytes, bytes]]) -> None:
    Embedding.objects.bulk_create(
        [Embedding(image_id=image_id, backbone=BACKBONE, backbone_version=VERSION, dim=DIM, vector=vector,
                   local_features=local) for image_id, vector, local in batch],
        update_conflicts=True, unique_fields=["image", "backbone", "backbone_version"],
        update_fields=["dim", "vector", "local_features"])


def with_copy(batch: list[tuple[int, bytes, bytes]], binary: bool = False) -> None:
    table = Embedding._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (image_id bigint, backbone text, "
                       "backbone_version text, dim integer, vector bytea, local_features bytea) ON COMMIT DELETE ROWS")
        raw = cursor.cursor
        with raw.copy("COPY incoming (image_id, backbone, backbone_version, dim, vector, local_features) "
                      f"FROM STDIN{' (FORMAT BINARY)' if binary else ''}") as copy:
            if binary:
                copy.set_types(["int8", "text", "text", "int4", "bytea", "bytea"])
            for image_id, vector, local in batch:
                copy.write_row((image_id, BACKBONE, VERSION, DIM, vector, local))
        cursor.execute(
            f"INSERT INTO {table} (image_id, backbone, backbone_version, dim, vector, local_features, created_at) "
            "SELECT image_id, backbone, backbone_version, dim, vector, local_features, now() FROM incoming "
            "ON CONFLICT (image_id, backbone, backbone_version) DO UPDATE SET dim = EXCLUDED.dim, "
            "vector = EXCLUDED.vector, local_features = EXCLUDED.local_features")


def with_binary_copy(batch: list[tuple[int, bytes, bytes]]) -> None:
    with_copy(batch, binary=True)


def timed(write, batch: list[tuple[int, bytes, bytes]]) -> float:
    started = time.perf_counter()
    with transaction.atomic():
        write(batch)
        changelog.record_changes(image_ids=[image_id for image_id, _, _ in batch], kind=IndexChange.Kind.UPSERT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database of its own.")
    call_command("migrate", verbosity=0)
    call_command("flush", "--noinput", verbosity=0)
    needed = 3 * max(args.batch) * args.rounds * 2
    Image.objects.bulk_create([Image(original_name=f"{i}.jpg", sha256=f"{i:064x}", format="JPEG", width=1, height=1,
                                     byte_size=1, original=f"originals/{i}.jpg") for i in range(needed)])
    ids = list(Image.objects.order_by("id").values_list("id", flat=True))
    server = connection.cursor().connection.info.server_version
    print(f"PostgreSQL {server}, rows of {len(rows([0])[0][1]) + len(rows([0])[0][2])} bytes")
    for size in args.batch:
        times: dict[str, list[float]] = {"bulk_create": [], "copy": [], "binary copy": []}
        for _ in range(args.rounds):
            for name, write in (("bulk_create", with_bulk_create), ("copy", with_copy),
                                ("binary copy", with_binary_copy)):
                fresh = ids[:size]
                del ids[:size]
                times[name].append(timed(write, rows(fresh)))  # new rows: an import
                times[name].append(timed(write, rows(fresh)))  # the same rows again: a re-embed
        for name, values in times.items():
            median = statistics.median(values)
            print(f"batch {size:4d}  {name:12s} {median * 1000:8.2f} ms per batch  {size / median:9.0f} rows/s")
        for name in ("copy", "binary copy"):
            ratio = statistics.median(times["bulk_create"]) / statistics.median(times[name])
            print(f"batch {size:4d}  {name} is {ratio:.2f}x as fast as bulk_create")


if __name__ == "__main__":
    main()
