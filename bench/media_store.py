#!/usr/bin/env python3
"""Media on the local disk and in a bucket of the S3 gateway (bin/ceph-gateway), side by side in one process.

- storing a large original through the upload service (`gallery.services.image_upload`), which
  streams it to the storage (a multipart upload on the gateway);
- serving a thumbnail and a display copy through the site (`/media/...`: the visibility check,
  then the copy streamed from the storage), in-process through Django's test client;
- how long an upload waits before it is refused when the store refuses connections, and when it
  takes none (a listening socket whose accept queue is full drops new connections).

It runs on a throw-away SQLite database and data directory (the test settings); the gateway must
be running (`bin/ceph-gateway start`), and a bucket of its own is made and removed.

    .venv/bin/python bench/media_store.py [--uploads 5] [--requests 200]
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")  # the test client's host name

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from config.object_store import object_store_client  # noqa: E402
from gallery import copies  # noqa: E402
from gallery.models import Image  # noqa: E402
from gallery.services import image_upload  # noqa: E402

S3_STORAGE = {"BACKEND": "config.media_storage.MediaStorage"}


def gateway_settings() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "bin" / "ceph-gateway"), "env"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line.startswith("LOOKALIKE_S3_"))


@contextmanager
def in_a_bucket() -> Iterator[str]:
    """Media in a new bucket of the gateway, removed afterwards."""
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    with override_settings(**gateway_settings(), LOOKALIKE_S3_BUCKET=bucket,
                           STORAGES={**settings.STORAGES, "default": S3_STORAGE}):
        object_store_client.cache_clear()
        client = object_store_client()
        client.create_bucket(Bucket=bucket)
        try:
            yield bucket
        finally:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=item["Key"])
            client.delete_bucket(Bucket=bucket)
            object_store_client.cache_clear()


@contextmanager
def on_disk() -> Iterator[str]:
    yield str(settings.MEDIA_ROOT)


def large_original(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(noise).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def small_picture() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def milliseconds(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure(where: str, place: Callable[[], AbstractContextManager[str]], uploads: int, requests: int) -> None:
    with place():
        originals = [large_original(seed) for seed in range(uploads)]
        stored: list[Image] = []

        def store_next() -> None:
            result = image_upload(source=io.BytesIO(originals[len(stored)]), original_name="noise.png", owner=None)
            assert result.status == "accepted" and result.image is not None, result.message
            stored.append(result.image)

        upload_ms = milliseconds(store_next, uploads)
        image = stored[0]
        copies.originals_decode([image], min_side=0)
        copies.images_make_display_copies(image_ids=[image.pk])
        image.refresh_from_db()
        Image.objects.filter(pk=image.pk).update(state=Image.State.INDEXED)
        client = Client()
        served = {}
        for kind, url in (("thumbnail", image.thumbnail_url), ("display copy", image.display_url)):
            def get(url: str = url) -> None:
                response = client.get(url)
                assert response.status_code == 200, response.status_code
                response.getvalue()
            get()
            served[kind] = (statistics.median(milliseconds(get, requests)), image.thumbnail.size
                            if kind == "thumbnail" else image.display.size)
        size = len(originals[0]) / 2**20
        print(f"{where}: store a {size:.1f} MiB original: median {statistics.median(upload_ms):.0f} ms "
              f"(min {min(upload_ms):.0f}, max {max(upload_ms):.0f}, {uploads} uploads)")
        for kind, (median, nbytes) in served.items():
            print(f"{where}: serve a {kind} ({nbytes / 1024:.0f} KiB) through /media/: median {median:.1f} ms "
                  f"({requests} requests)")
        Image.objects.all().delete()


def refusal_seconds(endpoint: str) -> float:
    with in_a_bucket(), override_settings(LOOKALIKE_S3_ENDPOINT_URL=endpoint,
                                          STORAGES={**settings.STORAGES, "default": S3_STORAGE}):
        started = time.monotonic()
        result = image_upload(source=io.BytesIO(small_picture()), original_name="x.png", owner=None)
        elapsed = time.monotonic() - started
    assert result.code == "store_unavailable", result.code
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    measure("disk", on_disk, args.uploads, args.requests)
    measure("gateway", in_a_bucket, args.uploads, args.requests)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    print(f"store refusing connections: upload refused after {refusal_seconds(closed):.1f} s")
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(3):  # fill the accept queue: the kernel then drops new connections
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.5)
        print(f"store taking no connection: upload refused after {refusal_seconds(f'http://127.0.0.1:{port}'):.1f} s")
        for filler in fillers:
            filler.close()


if __name__ == "__main__":
    main()
