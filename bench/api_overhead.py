#!/usr/bin/env python3
"""What the JSON API adds to a request, side by side in one process.

- reading an image (`GET /api/v1/images/<id>`) anonymously, with a bearer token and with a
  session, so that the cost of token authentication shows as a ratio;
- one rate-limit check (`config.ratelimit.rate_limit_hit`) on the file cache and, with `--redis`,
  on Redis;
- a search through the API (`POST /api/v1/search`) by gallery image and by upload, on a gallery
  of the first N bench images embedded here, with the server time the API reports (`took_ms`).

It runs on a throw-away SQLite database and data directory (the test settings), in-process
through Django's test client, so the times are the server's, without a network.

    .venv/bin/python bench/api_overhead.py [--requests 400] [--gallery 200] [--searches 100] [--redis URL]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")  # the test client's host name

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import AnonymousUser  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from api.services import api_token_create  # noqa: E402
from config.ratelimit import rate_limit_hit  # noqa: E402
from gallery import copies  # noqa: E402
from gallery.models import Image  # noqa: E402
from gallery.services import image_upload  # noqa: E402
from search import services as search_services  # noqa: E402

BENCH_IMAGES = ROOT.parent / "shared" / "bench" / "images"


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Milliseconds per call, after a few calls to warm up."""
    for _ in range(min(10, repeat)):
        action()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, times: list[float], baseline: float | None = None) -> str:
    p50 = statistics.median(times)
    ratio = f"{p50 / baseline:.2f} ×" if baseline else "1.00 ×"
    return f"| {label} | {p50:.3f} | {percentile(times, 0.99):.3f} | {ratio} |"


def expect(status: int) -> Callable[[object], None]:
    def check(response) -> None:
        assert response.status_code == status, (response.status_code, response.content[:200])
    return check


def authentication(repeat: int, image_id: int, secret: str, user) -> list[str]:
    anonymous, token, session = Client(), Client(), Client()
    session.force_login(user)
    url = f"/api/v1/images/{image_id}"
    ok = expect(200)
    base = timed(lambda: ok(anonymous.get(url)), repeat)
    lines = [row("GET image, anonymous", base)]
    lines.append(row("GET image, bearer token", timed(lambda: ok(token.get(url, headers={
        "Authorization": f"Bearer {secret}"})), repeat), statistics.median(base)))
    lines.append(row("GET image, session", timed(lambda: ok(session.get(url)), repeat), statistics.median(base)))
    return lines


def rate_limits(repeat: int, redis_url: str | None) -> list[str]:
    request = RequestFactory().post("/", REMOTE_ADDR="192.0.2.1")
    request.user = AnonymousUser()
    backends = {"file cache": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                               "LOCATION": str(settings.VAR_DIR / "bench-cache"), "KEY_PREFIX": "bench"}}
    if redis_url:
        backends["Redis"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                             "LOCATION": redis_url, "KEY_PREFIX": f"bench-{os.getpid()}"}
    lines, base = [], None
    for name, backend in backends.items():
        with override_settings(CACHES={"default": backend}, LOOKALIKE_RATE_LIMIT_SEARCH="1000000000/day"):
            times = timed(lambda: rate_limit_hit(request, scope="search"), repeat)
        base = base or statistics.median(times)
        lines.append(row(f"rate-limit check, {name}", times, base))
    return lines


def gallery(count: int, owner) -> list[Image]:
    every = sorted(BENCH_IMAGES.rglob("*.jpg"))
    paths = every[:: max(1, len(every) // count)][:count]  # spread over the five categories
    stored = []
    for path in paths:
        result = image_upload(source=io.BytesIO(path.read_bytes()), original_name=path.name, owner=owner)
        if result.status == "accepted" and result.image is not None:
            stored.append(result.image)
    for image in stored:
        search_services.image_embed(image_id=image.pk, claim_token=f"bench-{image.pk}")
    # A search by upload sends a display copy, as a person saving one from the page would.
    copies.images_make_display_copies(image_ids=[image.pk for image in stored])
    return list(Image.objects.filter(state=Image.State.INDEXED))


def searches(repeat: int, images: list[Image], secret: str) -> list[str]:
    client = Client()
    headers = {"Authorization": f"Bearer {secret}"}
    took: dict[str, list[float]] = {"by image_id": [], "by upload": []}
    queries = [(image, Path(image.display.path).read_bytes()) for image in images[:repeat]]
    for image, data in queries:
        by_id = client.post("/api/v1/search", {"image_id": image.pk, "k": 24}, content_type="application/json",
                            headers=headers)
        by_upload = client.post("/api/v1/search", {"image": io.BytesIO(data), "k": 24}, headers=headers)
        for label, response in (("by image_id", by_id), ("by upload", by_upload)):
            expect(200)(response)
            took[label].append(response.json()["took_ms"])
    base = statistics.median(took["by image_id"])
    return [row(f"search {label} (took_ms)", times, base) for label, times in took.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--gallery", type=int, default=200)
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--redis", help="also time rate-limit checks on this Redis (keys expire within a day)")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(f"bench-{os.getpid()}", password="bench-password")
    _, secret = api_token_create(user=user, name="bench")
    images = gallery(args.gallery, user)
    print(f"{len(images)} indexed images; {args.requests} requests per row, {args.searches} searches.\n")
    print("| what | p50 ms | p99 ms | p50 ratio |")
    print("| --- | --- | --- | --- |")
    for line in (authentication(args.requests, images[0].pk, secret, user) + rate_limits(args.requests, args.redis)
                 + searches(args.searches, images, secret)):
        print(line)


if __name__ == "__main__":
    main()
