#!/usr/bin/env python3
"""Concurrent searches against a running site on this machine, timed by the client and the server.

Start the site first (``make run``, or ``python manage.py serve``) with an indexed gallery. The
script then sends ``--requests`` searches from ``--concurrency`` threads, stopping early after
``--seconds``, and prints requests per second, the client's latency p50/p99, and the server's
own split from its ``Server-Timing`` header: time spent embedding the picture and time spent
in the index (search, re-ranking and loading the results).

Modes:
  upload   POST a picture to the search page (``--path``, default /search/); the pictures are
           the gallery's JPEGs, sent in turn;
  similar  GET the "similar" page of gallery images (``--path``, default
           /images/{id}/similar/), ids from ``--ids FIRST LAST``; nothing is embedded.

Only loopback addresses are accepted, so that nobody's site is load-tested by mistake.

    .venv/bin/python bench/search_http.py --mode upload --concurrency 2 --requests 200
    .venv/bin/python bench/search_http.py --mode similar --ids 1 2698 --concurrency 4
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class NotLoopback(ValueError):
    pass


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise NotLoopback(f"{url} is not on this machine (resolves to {', '.join(sorted(addresses))}).")


@dataclass
class Sample:
    seconds: float
    status: int
    embed_ms: float | None
    index_ms: float | None


def server_timing(header: str) -> dict[str, float]:
    timings = {}
    for metric in header.split(","):
        name, _, duration = metric.strip().partition(";dur=")
        if duration:
            timings[name] = float(duration)
    return timings


class Client:
    """One session per thread: the upload form needs the CSRF cookie and token of its own session."""

    def __init__(self, base: str, path: str) -> None:
        self.session = requests.Session()
        self.url = urljoin(base, path)
        self.token = ""

    def upload(self, name: str, data: bytes) -> requests.Response:
        if not self.token:
            page = self.session.get(self.url, timeout=60)
            page.raise_for_status()
            found = _CSRF_INPUT.search(page.text)
            self.token = found.group(1) if found else ""
        return self.session.post(self.url, data={"csrfmiddlewaretoken": self.token},
                                 files={"image": (name, data, "image/jpeg")},
                                 headers={"Referer": self.url}, timeout=120)

    def similar(self, image_id: int) -> requests.Response:
        return self.session.get(self.url.format(id=image_id), timeout=120)


def run(send: Callable[[Client, int], requests.Response], clients: list[Client], total: int,
        seconds: float) -> tuple[list[Sample], float]:
    deadline = time.monotonic() + seconds
    numbers = count()
    lock = threading.Lock()
    samples: list[Sample] = []

    def worker(client: Client) -> None:
        while time.monotonic() < deadline:
            with lock:
                n = next(numbers)
            if n >= total:
                return
            started = time.perf_counter()
            response = send(client, n)
            elapsed = time.perf_counter() - started
            timing = server_timing(response.headers.get("Server-Timing", ""))
            with lock:
                samples.append(Sample(elapsed, response.status_code, timing.get("embed"), timing.get("index")))

    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(worker, clients))
    return samples, time.perf_counter() - started


def percentiles(values: list[float]) -> str:
    if not values:
        return "     -      -"
    p50, p99 = np.percentile(values, [50, 99])
    return f"{p50:6.1f} {p99:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000/", help="the site's address (loopback only)")
    parser.add_argument("--mode", choices=["upload", "similar"], default="upload")
    parser.add_argument("--path", default=None, help="default: /search/ or /images/{id}/similar/")
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "bench" / "images"))
    parser.add_argument("--ids", type=int, nargs=2, default=[1, 100], metavar=("FIRST", "LAST"))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120, help="stop sending after this long")
    parser.add_argument("--warmup", type=int, default=4, help="requests sent first and not counted")
    args = parser.parse_args()
    if args.concurrency < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--concurrency, --requests and --seconds must be positive")
    try:
        require_loopback(args.url)
    except (NotLoopback, socket.gaierror) as exc:
        parser.error(str(exc))

    path = args.path or ("/search/" if args.mode == "upload" else "/images/{id}/similar/")
    clients = [Client(args.url, path) for _ in range(args.concurrency)]
    if args.mode == "upload":
        files = sorted(Path(args.images).rglob("*.jpg"))
        if not files:
            parser.error(f"no JPEG files under {args.images}")
        pictures = [(p.name, p.read_bytes()) for p in files]

        def send(client: Client, n: int) -> requests.Response:
            return client.upload(*pictures[n % len(pictures)])
    else:
        first, last = args.ids

        def send(client: Client, n: int) -> requests.Response:
            return client.similar(first + n % (last - first + 1))

    run(send, clients[:1], args.warmup, args.seconds)
    samples, elapsed = run(send, clients, args.requests, args.seconds)
    ok = [s for s in samples if s.status == 200]
    print(f"{args.mode} at {urljoin(args.url, path)}: {len(samples)} requests from {args.concurrency} threads "
          f"in {elapsed:.1f} s, {len(samples) - len(ok)} not 200")
    print(f"{'':18} {'p50 ms':>6} {'p99 ms':>6}")
    print(f"{'client latency':18} {percentiles([s.seconds * 1000 for s in ok])}")
    print(f"{'server embedding':18} {percentiles([s.embed_ms for s in ok if s.embed_ms is not None])}")
    print(f"{'server index':18} {percentiles([s.index_ms for s in ok if s.index_ms is not None])}")
    print(f"throughput: {len(ok) / elapsed:.1f} requests/s")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
