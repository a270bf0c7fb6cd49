"""Two "hosts" on this machine that share only PostgreSQL, Redis and a bucket on the S3 gateway.

Each host is a set of processes with a DATA_DIR of its own, and no path of one is known to the
other: host A runs the web server and the index writer, host B the web server and an embedding
worker. Run it alone with ``pytest -m two_hosts -s`` (``-s`` shows the times it measures).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from api.services import api_token_create
from gallery.models import Image
from search import generations
from search.models import Embedding
from tests import images
from tests.conftest import PROJECT_ROOT, Worker, process_env, wait_for

pytestmark = [
    pytest.mark.two_hosts,
    # Five processes that each load the model, on a machine that may be busy.
    pytest.mark.timeout(600),
    pytest.mark.skipif(not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
                       reason="hosts share PostgreSQL and Redis; SQLite and the embedded broker are one machine's"),
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Host:
    name: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    base_url: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {**process_env(), "DATA_DIR": str(self.data_dir)}

    def start_web(self) -> None:
        port = free_port()
        log = (self.data_dir / "web.log").open("ab")
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--threads", "4", "--timeout", "120"],
            cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.base_url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(self.base_url + "/", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, timeout=120, interval=0.2, message=f"host {self.name}'s web server to answer")

    def start_worker(self, kind: str, *options: str) -> Worker:
        worker = Worker(self.data_dir / f"{kind}.log")
        worker.start(*options, DATA_DIR=str(self.data_dir))
        worker.wait_ready()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)


@pytest.fixture
def hosts(s3_media, celery_worker_process, transactional_db, tmp_path) -> Iterator[tuple[Host, Host]]:
    # The session's worker takes the same queues with this machine's folder: only the hosts' run now.
    celery_worker_process.stop()
    a = Host("A", tmp_path / "host-a")
    b = Host("B", tmp_path / "host-b")
    for host in (a, b):
        host.data_dir.mkdir()
    try:
        a.start_web()
        a.start_worker("index-writer", f"--queues={settings.LOOKALIKE_INDEX_QUEUE}", "--pool=solo")
        b.start_web()
        b.start_worker("embedder", f"--queues={settings.LOOKALIKE_EMBED_QUEUE},{settings.LOOKALIKE_BACKGROUND_QUEUE}")
        yield a, b
    finally:
        a.stop()
        b.stop()
        celery_worker_process.start(LOOKALIKE_S3_BUCKET="")


@pytest.fixture
def token(django_user_model) -> str:
    user = django_user_model.objects.create_user("dana", password="dana-password")
    return api_token_create(user=user, name="two hosts")[1]


def upload(host: Host, token: str, data: bytes, name: str) -> int:
    answer = requests.post(f"{host.base_url}/api/v1/images", headers={"Authorization": f"Bearer {token}"},
                           files={"image": (name, data, "image/jpeg")}, timeout=60)
    assert answer.status_code == 202, answer.text
    (result,) = answer.json()["results"]
    return result["id"]


def found_first(host: Host, token: str, data: bytes) -> int | None:
    """The id of the best result of a search by this picture through the host's API."""
    answer = requests.post(f"{host.base_url}/api/v1/search", headers={"Authorization": f"Bearer {token}"},
                           files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "5"}, timeout=60)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    return results[0]["id"] if results else None


class Searches(threading.Thread):
    """Searches through both hosts' web servers, one after another, until stopped; records every answer."""

    def __init__(self, hosts: tuple[Host, Host], token: str, query: bytes) -> None:
        super().__init__(daemon=True)
        self.hosts, self.token, self.query = hosts, token, query
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for host in self.hosts:
                try:
                    answer = requests.post(f"{host.base_url}/api/v1/search",
                                           headers={"Authorization": f"Bearer {self.token}"},
                                           files={"image": ("q.jpg", self.query, "image/jpeg")}, timeout=60)
                    self.statuses.append(answer.status_code)
                    if answer.status_code != 200:
                        self.failures.append(f"{host.name}: {answer.status_code} {answer.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(f"{host.name}: {exc}")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(120)


def published_ids() -> set[int]:
    """The image ids in the newest snapshot in the bucket, loaded here as a third host would."""
    generation = generations.active()
    store = generation.store
    meta = store.read_meta()
    assert meta is not None, "no snapshot has been published"
    return set(store.load(meta, generation.params).ids())


def indexed_ids() -> set[int]:
    return set(Image.objects.filter(state=Image.State.INDEXED).values_list("id", flat=True))


def test_two_hosts_share_uploads_deletes_and_the_index_writer(hosts, token, tmp_path):
    a, b = hosts
    cat = images.bench_image("cat", 1).read_bytes()

    uploaded_at = time.monotonic()
    cat_id = upload(b, token, cat, "cat.jpg")
    wait_for(lambda: found_first(a, token, cat) == cat_id, timeout=180, interval=0.2,
             message="the upload through B to be found through A")
    to_searchable = time.monotonic() - uploaded_at
    assert found_first(b, token, cat) == cat_id
    print(f"\nupload through B to searchable through A: {to_searchable:.2f} s")

    answer = requests.delete(f"{b.base_url}/api/v1/images/{cat_id}", headers={"Authorization": f"Bearer {token}"},
                             timeout=60)
    assert answer.status_code == 204, answer.text
    assert found_first(a, token, cat) != cat_id
    assert found_first(b, token, cat) != cat_id

    pictures = {f"dog-{n}.jpg": images.bench_image("dog", n).read_bytes() for n in range(1, 7)}
    first_half = dict(list(pictures.items())[:3])
    second_half = dict(list(pictures.items())[3:])
    searches = Searches((a, b), token, pictures["dog-1.jpg"])
    searches.start()
    try:
        ids = {name: upload(b, token, data, name) for name, data in first_half.items()}
        wait_for(lambda: indexed_ids() >= set(ids.values()), timeout=180, message="the first uploads to be indexed")
        writer_a = a.workers[0]
        writer_a.stop(signal.SIGKILL)
        ids |= {name: upload(b, token, data, name) for name, data in second_half.items()}
        b.start_worker("index-writer", f"--queues={settings.LOOKALIKE_INDEX_QUEUE}", "--pool=solo")
        wait_for(lambda: indexed_ids() == set(ids.values()), timeout=180, message="every upload to be indexed")
        wait_for(lambda: published_ids() == set(ids.values()), timeout=180,
                 message="B's index writer to publish a snapshot of every indexed image")
        for name, data in pictures.items():
            assert found_first(a, token, data) == ids[name], name
            assert found_first(b, token, data) == ids[name], name
    finally:
        searches.stop()
    assert not searches.failures, searches.failures[:5]
    assert len(searches.statuses) >= 4

    assert cat_id not in published_ids()
    with connection.cursor() as cursor:
        cursor.execute("SELECT image_id, COUNT(*) FROM search_embedding GROUP BY image_id HAVING COUNT(*) > 1")
        assert cursor.fetchall() == []
    assert Embedding.objects.filter(image_id__in=ids.values()).count() == len(ids)

    # B's web process searched a snapshot that it downloaded into its own folder.
    meta = generations.active().store.read_meta()
    assert meta is not None
    cached = b.data_dir / "var" / "index-cache" / generations.active().name / meta.snapshot_id
    assert cached.is_dir(), sorted(str(p.relative_to(b.data_dir)) for p in b.data_dir.rglob("*") if p.is_dir())
