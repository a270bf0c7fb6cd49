"""Searches by URL to a server that trickles its answer, against a real gunicorn server process with the
threads `manage.py serve` gives it: each search is answered in time, and the site keeps answering."""
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import PROJECT_ROOT, TricklingServer, process_env, wait_for

FETCH_TIMEOUT = 2.0
SEARCHES = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_request(url: str, body: bytes | None = None) -> tuple[int, dict, float]:
    """The status, the JSON body (or {}) and the seconds the answer took."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    elapsed = time.monotonic() - started
    answer = json.loads(raw) if headers.get("Content-Type", "").startswith("application/json") else {}
    if "Retry-After" in headers:
        answer["Retry-After"] = headers["Retry-After"]
    return status, answer, elapsed


@pytest.fixture
def site(transactional_db, tmp_path) -> Iterator[str]:
    """gunicorn as `manage.py serve` runs it (2 processes of 4 threads), with the loopback allowed for
    fetching and the default rate limits."""
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    env = {**process_env(), "LOOKALIKE_URL_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
           "LOOKALIKE_URL_FETCH_TIMEOUT": str(FETCH_TIMEOUT), "LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT": "2",
           "LOOKALIKE_RATE_LIMIT_SEARCH": "60/minute", "LOOKALIKE_RATE_LIMIT_URL_FETCH": "20/minute",
           # Rate-limit counters of its own.
           "LOOKALIKE_TEST_CACHE_PREFIX": f"test-{uuid.uuid4().hex[:12]}"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                               "--workers", "2", "--threads", "4"],
                              cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return timed_request(base + "/")[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, timeout=60, interval=0.2, message="gunicorn to answer")
        for _ in range(8):  # every thread of both processes has served a page once
            timed_request(base + "/")
        yield base
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.mark.liveness
def test_url_searches_to_a_trickling_server_are_answered_in_time_and_the_site_stays_up(site):
    trickler = TricklingServer("status line", interval=0.25)
    assert trickler.trickle_seconds > 4 * FETCH_TIMEOUT
    searches: list[tuple[int, dict, float]] = []
    gallery_times: list[float] = []
    searching = threading.Event()
    searching.set()
    start = threading.Barrier(SEARCHES + 1)

    def search() -> None:
        start.wait()
        searches.append(timed_request(site + "/api/v1/search", json.dumps({"url": trickler.url}).encode()))

    def browse() -> None:
        start.wait()
        while searching.is_set():
            status, _, elapsed = timed_request(site + "/")
            assert status == 200
            gallery_times.append(elapsed)
            time.sleep(0.05)

    clients = [threading.Thread(target=search) for _ in range(SEARCHES)]
    browser = threading.Thread(target=browse)
    try:
        for thread in [*clients, browser]:
            thread.start()
        for thread in clients:
            thread.join(90)
        searching.clear()
        browser.join(90)
    finally:
        trickler.close()

    for status, answer, elapsed in sorted(searches, key=lambda search: search[2]):
        print(f"search: {status} {answer.get('code')} Retry-After={answer.get('Retry-After', '-')} "
              f"in {elapsed:.2f} s")
    print(f"gallery page under the attack: {len(gallery_times)} answers, "
          f"median {statistics.median(gallery_times):.3f} s, slowest {max(gallery_times):.3f} s; "
          f"all: {' '.join(f'{t:.3f}' for t in gallery_times)}")
    assert len(searches) == SEARCHES
    assert max(elapsed for _, _, elapsed in searches) < FETCH_TIMEOUT + 2
    codes = [answer.get("code") for _, answer, _ in searches]
    assert set(codes) <= {"url_timeout", "url_busy"}, codes
    assert 1 <= codes.count("url_timeout") <= 2, "at most the slots' number of fetches ran"
    assert all(answer["Retry-After"] == str(int(FETCH_TIMEOUT)) for status, answer, _ in searches if status == 503)
    assert len(gallery_times) >= 10, "the page was asked for all along the attack"
    assert max(gallery_times) < 1.0
