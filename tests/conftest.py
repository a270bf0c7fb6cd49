from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from core.index import ObjectSnapshotStore, Snapshots, SnapshotStore
from gallery import copies
from gallery.models import Image
from gallery.services import image_upload
from search import services as search_services
from tests import images
from tests.snapshot_stores import STORE_KINDS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
S3_SETTINGS = ("LOOKALIKE_S3_BUCKET", "LOOKALIKE_S3_ENDPOINT_URL", "LOOKALIKE_S3_REGION", "LOOKALIKE_S3_ACCESS_KEY_ID",
               "LOOKALIKE_S3_SECRET_ACCESS_KEY", "LOOKALIKE_S3_ADDRESSING_STYLE")


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", password="alice-password")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user("bob", password="bob-password")


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user("carol", password="carol-password", is_staff=True)


@pytest.fixture
def fresh_cache(settings) -> str:
    """A cache namespace of this test's own, so that no counter of another test is seen."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": prefix}}
    return prefix


@pytest.fixture
def embedding_messages(monkeypatch) -> list[tuple[str, tuple]]:
    """The embedding messages sent, as (task name, arguments), in place of the broker."""
    from search.tasks import embed_image, send_embedding_batches

    messages: list[tuple[str, tuple]] = []
    for task in (embed_image, send_embedding_batches):
        monkeypatch.setattr(task, "apply_async", lambda args, name=task.name, **options: messages.append(
            (name, args)))
    return messages


@pytest.fixture
def alice_client(client, user):
    client.force_login(user)
    return client


def upload_file(name: str, data: bytes, content_type: str = "image/jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def store(data: bytes, name: str = "picture.jpg", owner=None) -> Image:
    """Upload through the service, as the web and the importer do; fails the test if refused."""
    result = image_upload(source=io.BytesIO(data), original_name=name, owner=owner)
    assert result.status == "accepted", result.message
    assert result.image is not None, "an accepted upload is stored"
    return result.image


def make_copies(image: Image) -> Image:
    """The thumbnail and the display copy that the workers make of a stored image, made here."""
    copies.originals_decode([image], min_side=0)
    copies.images_make_display_copies(image_ids=[image.pk])
    image.refresh_from_db()
    return image


def store_indexed(data: bytes, name: str = "picture.jpg", owner=None) -> Image:
    """Upload and embed in this process (the worker's code path, called directly)."""
    image = store(data, name, owner)
    search_services.image_embed(image_id=image.pk, claim_token=f"test-{image.pk}")
    image.refresh_from_db()
    if image.state == Image.State.EMBEDDING:
        # A worker started by an earlier test took the image first: it finishes the job.
        wait_for(lambda: Image.objects.filter(pk=image.pk).exclude(state=Image.State.EMBEDDING).exists(),
                 message=f"a worker to finish embedding image #{image.pk}")
        image.refresh_from_db()
    assert image.state == Image.State.INDEXED, image.error
    # The task that the worker queues for it, run here: the display copy.
    return make_copies(image)


def media_files() -> set[str]:
    """The names of every file in the media storage: under MEDIA_ROOT, or in the test's bucket."""
    from django.core.files.storage import default_storage

    def walk(folder: str) -> Iterator[str]:
        folders, files = default_storage.listdir(folder)
        yield from (f"{folder}{name}" for name in files)
        for name in folders:
            yield from walk(f"{folder}{name}/")

    try:
        return set(walk(""))
    except FileNotFoundError:  # no MEDIA_ROOT yet
        return set()


def empty_index_folder() -> None:
    """No snapshot, as after a fresh install."""
    from search import runtime

    shutil.rmtree(settings.INDEX_DIR, ignore_errors=True)
    shutil.rmtree(settings.INDEX_CACHE_DIR, ignore_errors=True)
    # A rolled-back test database hands out the same ids and sequence numbers again, which a
    # reader kept from an earlier test would take for rows it has already read.
    runtime.drop_index_reader()


@pytest.fixture
def clean_index() -> Iterator[Path]:
    """An empty index folder: each test starts with no snapshot."""
    empty_index_folder()
    yield settings.INDEX_DIR
    shutil.rmtree(settings.INDEX_DIR, ignore_errors=True)
    shutil.rmtree(settings.INDEX_CACHE_DIR, ignore_errors=True)


def manage(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a management command in its own process, against the test database."""
    proc = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env or process_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def process_env() -> dict[str, str]:
    """The environment for a process that must share this test session's database and data."""
    from django.db import connection

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.test", PYTHONUNBUFFERED="1")
    # The media storage of the test that starts it: the test's bucket, or files under MEDIA_ROOT.
    env.update({name: str(getattr(settings, name) or "") for name in S3_SETTINGS})
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.postgresql":
        env["DATABASE_URL"] = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/"
                               f"{db['NAME']}")
    return env


class Worker:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self, *options: str, **env: str) -> None:
        """Start the worker, taking all the site's queues (as one worker of a small site does) unless
        ``options`` name some; ``env`` sets environment variables (settings) for this run of it only."""
        log = self.log_path.open("ab")
        self._log_start = log.tell()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO", "--concurrency=2",
             "--without-gossip", "--without-mingle", "--without-heartbeat", *options],
            cwd=PROJECT_ROOT, env={**process_env(), **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        """Return once this start of the worker consumes its queues."""
        wait_for(lambda: " ready." in self.log_path.read_text(errors="replace")[self._log_start:], timeout,
                 message=f"the worker logging to {self.log_path.name} to be ready")

    def busiest_pool_process(self, over: float = 0.5) -> int:
        """The pool process (a child of the worker's main process) that used the most CPU during the
        next ``over`` seconds: the one running a task, when only one is."""
        use = self.pool_cpu_use(over)
        return max(use, key=use.__getitem__)

    def pool_cpu_use(self, over: float = 0.5) -> dict[int, int]:
        """The CPU time (in clock ticks) that each pool process (a child of the worker's main
        process) used during the next ``over`` seconds."""
        before = self._pool_cpu_times()
        time.sleep(over)
        after = self._pool_cpu_times()
        return {pid: after[pid] - before.get(pid, 0) for pid in after}

    def _pool_cpu_times(self) -> dict[int, int]:
        assert self.process is not None
        children: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # user + system time
        return children

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_idle(self, timeout: float = 180) -> None:
        """Return once this start of the worker has finished every task it received, and has received
        none for a second: the tasks a test leaves queued (display copies, publishing) would otherwise
        hold rows that the test database's flush then waits for, and the two deadlock."""
        if self.process is None or self.process.poll() is not None:
            return
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        while time.monotonic() < deadline:
            if self.running_tasks():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 1:
                return
            time.sleep(0.1)

    def running_tasks(self) -> set[str]:
        """The ids of the tasks that this start of the worker received and has not finished: the last
        line its log has of each says it was received (a task that failed, retried or was rejected has
        a later line; one given back by a killed pool process is received again)."""
        last_event: dict[str, str] = {}
        log = self.log_path.read_text(errors="replace")[self._log_start:]
        for task_id, event in re.findall(r"Task [\w.]+\[([0-9a-f-]+)\] (\w+)", log):
            last_event[task_id] = event
        return {task_id for task_id, event in last_event.items() if event == "received"}


def _yield_deadlocks_to_other_processes(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    """This process's PostgreSQL sessions wait 10 s before they look for a deadlock, the site's
    processes 1 s: when the flush between tests (TRUNCATE) and a request or a task still running
    wait for each other, the other one is cancelled and the flush goes on. Setting it takes a
    superuser, as CI's is; without one, which side is cancelled is left to chance."""
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '10s'")
    except DatabaseError:
        pass


connection_created.connect(_yield_deadlocks_to_other_processes)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, tmp_path_factory) -> Iterator[Worker]:
    """One real worker for the session, on the configured broker, using the test database."""
    worker = Worker(tmp_path_factory.mktemp("worker") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def worker(celery_worker_process, transactional_db, clean_index) -> Iterator[Worker]:
    yield celery_worker_process
    celery_worker_process.wait_idle()


def wait_for(condition, timeout: float = 60, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


@pytest.fixture
def bench_cat() -> Path:
    return images.bench_image("cat", 1)


class PictureServer:
    """A real HTTP server on the loopback, for searches by URL: each path is one way to answer."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.picture = images.jpeg(7)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                    return
                status, headers, body, delay = route
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.routes: dict[str, tuple[int, dict[str, str], bytes, float]] = {
            "/picture.jpg": (200, {"Content-Type": "image/jpeg"}, self.picture, 0),
            "/page.html": (200, {"Content-Type": "image/jpeg"}, b"<!doctype html><title>Not a picture</title>", 0),
            "/slow.jpg": (200, {"Content-Type": "image/jpeg"}, self.picture, 3.0),
            "/to-picture": (302, {"Location": "/picture.jpg"}, b"", 0),
            "/to-private": (302, {"Location": "http://10.1.2.3/picture.jpg"}, b"", 0),
            "/to-metadata": (301, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"", 0),
            "/loop": (302, {"Location": "/loop"}, b"", 0),
            "/huge.jpg": (200, {"Content-Type": "image/jpeg"}, self.picture + b"\0" * (2 * 1024 * 1024), 0),
            "/missing.jpg": (404, {}, b"gone", 0),
        }
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TricklingServer:
    """A real server on the loopback that sends one part of its answer a byte at a time, each byte well
    within any socket timeout: the status line, a header, or a chunk-size line of a chunked body."""

    ANSWERS = {
        # (sent at once, sent a byte at a time, sent at once)
        "status line": (b"", b"HTTP/1.1 200 OK" + b" " * 24 + b"\r\n",
                        b"Content-Length: 1\r\n\r\nx"),
        "header": (b"HTTP/1.1 200 OK\r\n", b"X-Padding: " + b"." * 28 + b"\r\n", b"Content-Length: 1\r\n\r\nx"),
        "chunk-size line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0" * 39 + b"1\r\n",
                            b"x\r\n0\r\n\r\n"),
    }

    def __init__(self, part: str = "status line", interval: float = 0.1) -> None:
        import socketserver
        import threading

        head, trickled, tail = self.ANSWERS[part]

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                request = b""
                while b"\r\n\r\n" not in request:
                    received = self.request.recv(4096)
                    if not received:
                        return
                    request += received
                try:
                    self.request.sendall(head)
                    for byte in trickled:
                        time.sleep(interval)
                        self.request.sendall(bytes([byte]))
                    self.request.sendall(tail)
                except OSError:
                    return  # the client gave up

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/picture.jpg"
        # How long the trickled part takes in all.
        self.trickle_seconds = interval * len(trickled)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def picture_server(settings) -> Iterator[PictureServer]:
    """The server, with the loopback allowed for fetching (it is refused by default)."""
    settings.LOOKALIKE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.LOOKALIKE_URL_FETCH_TIMEOUT = 1.0
    server = PictureServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_gateway() -> dict[str, str]:
    """The settings of the single-node Ceph S3 gateway (bin/ceph-gateway), started if it is not running."""
    started = subprocess.run([str(PROJECT_ROOT / "bin" / "ceph-gateway"), "start"], capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, f"bin/ceph-gateway start failed:\n{started.stdout}\n{started.stderr}"
    return dict(line.split("=", 1) for line in started.stdout.splitlines() if line.startswith("LOOKALIKE_S3_"))


@pytest.fixture
def s3_bucket(s3_gateway, settings) -> Iterator[str]:
    """A new, empty bucket on the gateway, which the settings name for this test; removed after it."""
    from config.object_store import object_store_client, snapshot_store_client

    for name, value in s3_gateway.items():
        setattr(settings, name, value)
    bucket = settings.LOOKALIKE_S3_BUCKET = f"test-{uuid.uuid4().hex[:12]}"
    object_store_client.cache_clear()
    snapshot_store_client.cache_clear()
    client = object_store_client()
    client.create_bucket(Bucket=bucket)
    yield bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)
    object_store_client.cache_clear()
    snapshot_store_client.cache_clear()


@pytest.fixture
def s3_media(s3_bucket, settings) -> str:
    """Media in the test's bucket on the gateway: the default storage is the S3 backend on it."""
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "config.media_storage.MediaStorage"}}
    return s3_bucket


def unreachable_address() -> str:
    """An address on the loopback where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def change_media_store(settings, **changes: str) -> None:
    """Change LOOKALIKE_S3_* settings of a test on the bucket, and make the media storage again with them."""
    for name, value in changes.items():
        setattr(settings, name, value)
    settings.STORAGES = {**settings.STORAGES}


def refuse_writes(bucket: str, keys: str = "*") -> None:
    """From now on, the gateway refuses every write to the bucket's objects that ``keys`` matches."""
    import json

    from config.object_store import object_store_client

    object_store_client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                       "Resource": f"arn:aws:s3:::{bucket}/{keys}"}],
    }))


@pytest.fixture(params=["local", "s3"])
def media_storage(request) -> str:
    """A test that takes it runs twice: with media under MEDIA_ROOT, and in a bucket on the S3 gateway."""
    if request.param == "s3":
        request.getfixturevalue("s3_media")
    return request.param


@pytest.fixture
def media_worker(media_storage, celery_worker_process, transactional_db, clean_index) -> Iterator[Worker]:
    """The session's worker, reading and writing the media storage of this test: for the bucket, it is
    started again on it, and on local media once more after the test."""
    worker = celery_worker_process
    if media_storage == "local":
        yield worker
        worker.wait_idle()
        return
    worker.stop()
    worker.start()  # process_env() names the test's bucket
    worker.wait_ready()
    yield worker
    worker.stop()
    worker.start(LOOKALIKE_S3_BUCKET="")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def make_store(request, store_kind, tmp_path) -> Callable[..., Snapshots]:
    """Makes the store of one index as a process on ``host`` sees it: on the gateway, each host has
    its own cache folder; a local folder is one machine's, whatever the host."""
    if store_kind == "local":
        return lambda host="a": SnapshotStore(tmp_path / "index")
    bucket = request.getfixturevalue("s3_bucket")
    from config.object_store import snapshot_store_client

    return lambda host="a": ObjectSnapshotStore(snapshot_store_client(), bucket, "index/g1/",
                                                tmp_path / f"cache-{host}")
