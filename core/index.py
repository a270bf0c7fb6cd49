"""The HNSW index and its snapshots, in a folder or in an S3 bucket. Free of Django.

The database holds every vector; an index is a derived copy that can always be rebuilt. One
writer changes an ``HnswIndex`` in memory and publishes it with ``publish``. ``SnapshotStore``
(one machine) writes each snapshot to its own folder, fsyncs it, renames it into place and only
then names it in ``CURRENT.json``, which is itself replaced atomically. ``ObjectSnapshotStore``
(several machines) uploads each snapshot's files under a key prefix of their own and writes the
``CURRENT.json`` object last; each host downloads a snapshot once into a local cache folder.
Either way a reader sees the previous snapshot or the next one, never a half-written one, and
verifies the checksums before use. hnswlib must not be searched while the same object is being
added to, so readers load their own copy and never share the writer's.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hnswlib
import numpy as np

from core.identity import IndexIdentity

FORMAT_VERSION = 1
_INDEX_FILE = "index.hnsw"
_DELETED_FILE = "deleted.npy"
_POINTER = "CURRENT.json"
# A download staging folder older than this was left by a process that died during it.
_STALE_DOWNLOAD_SECONDS = 3600.0

log = logging.getLogger(__name__)


class SnapshotCorrupt(RuntimeError):
    """A snapshot is missing, truncated or does not match its checksum."""


class SnapshotUnavailable(RuntimeError):
    """The object store could not be reached, or answered with an error: nothing is known to be wrong
    with the snapshot itself, and trying again later may succeed."""


class IndexMismatch(ValueError):
    """An index was built for other vectors (backbone, version or dimension) than asked for."""


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 256


def stacked(vectors: Mapping[int, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids of ``vectors`` (int64) and their vectors as the rows of one float32 matrix, in the
    same order: what ``HnswIndex.upsert`` and exact searches take."""
    ids = np.fromiter(vectors, dtype=np.int64, count=len(vectors))
    matrix = np.stack(list(vectors.values())) if vectors else np.zeros((0, dim), dtype=np.float32)
    return ids, matrix


class HnswIndex:
    """An hnswlib graph over image ids, with inner-product similarity on unit vectors.

    Capacity doubles when it runs out, so that adding n vectors costs O(n log n) resizes at most.
    """

    def __init__(self, identity: IndexIdentity, params: HnswParams, *, capacity: int = 1024,
                 graph: hnswlib.Index | None = None, deleted: Iterable[int] = ()) -> None:
        self.identity = identity
        self.params = params
        if graph is None:
            graph = hnswlib.Index(space="ip", dim=identity.dim)
            graph.init_index(max_elements=max(capacity, 16), M=params.m, ef_construction=params.ef_construction)
        graph.set_ef(params.ef_search)
        self._graph = graph
        self._deleted = set(deleted)

    @property
    def count(self) -> int:
        """Live vectors, not counting the ones marked deleted."""
        return int(self._graph.element_count) - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        return len(self._deleted)

    @property
    def capacity(self) -> int:
        return int(self._graph.max_elements)

    def ids(self) -> set[int]:
        return set(self._graph.get_ids_list()) - self._deleted

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors, or replace the vectors of ids already present (deleted ones included)."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.identity.dim):
            raise IndexMismatch(f"vectors of shape {vectors.shape} do not fit {self.identity.describe()}")
        needed = self._graph.element_count + len(ids)
        if needed > self._graph.max_elements:
            self._graph.resize_index(max(needed, 2 * self._graph.max_elements))
        self._graph.add_items(vectors, np.asarray(ids, dtype=np.int64), num_threads=1)
        self._deleted.difference_update(int(i) for i in ids)

    def remove(self, ids: Iterable[int]) -> None:
        present = set(self._graph.get_ids_list())
        for image_id in ids:
            if image_id in present and image_id not in self._deleted:
                self._graph.mark_deleted(image_id)
                self._deleted.add(image_id)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and cosine similarities per query, best first; k is capped at the live count."""
        k = min(k, self.count)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        while True:
            try:
                labels, distances = self._graph.knn_query(queries, k=k, num_threads=1)
                return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
            except RuntimeError:
                # hnswlib cannot always gather k results when many elements are marked deleted.
                if k == 1:
                    raise
                k = max(1, k // 2)

    def save_to(self, folder: Path) -> None:
        self._graph.save_index(str(folder / _INDEX_FILE))
        np.save(folder / _DELETED_FILE, np.fromiter(sorted(self._deleted), dtype=np.int64))


@dataclass(frozen=True)
class SnapshotMeta:
    snapshot_id: str
    backbone: str
    backbone_version: str
    dim: int
    m: int
    ef_construction: int
    count: int
    deleted: int
    capacity: int
    # The highest change-log sequence number whose change this snapshot contains.
    applied_seq: int
    created_at: float
    publish_seconds: float
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    space: str = "ip"

    @property
    def identity(self) -> IndexIdentity:
        return IndexIdentity(self.backbone, self.backbone_version, self.dim)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_meta(raw: bytes | str, where: str) -> SnapshotMeta:
    try:
        data = json.loads(raw)
        if data.get("format_version") != FORMAT_VERSION:
            raise SnapshotCorrupt(f"{where} has format {data.get('format_version')}, "
                                  f"this version reads {FORMAT_VERSION}")
        return SnapshotMeta(**data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SnapshotCorrupt(f"{where} is not valid snapshot metadata: {exc}") from exc


def _save_checksummed(index: HnswIndex, folder: Path) -> dict[str, dict[str, int | str]]:
    """Write the index's files into ``folder``, fsynced, and return their sizes and checksums."""
    index.save_to(folder)
    files: dict[str, dict[str, int | str]] = {}
    for path in sorted(folder.iterdir()):
        _fsync_path(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    _fsync_path(folder)
    return files


def _snapshot_meta(index: HnswIndex, snapshot_id: str, applied_seq: int, started: float,
                   files: dict[str, dict[str, int | str]]) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=snapshot_id, backbone=index.identity.backbone,
        backbone_version=index.identity.backbone_version, dim=index.identity.dim, m=index.params.m,
        ef_construction=index.params.ef_construction, count=index.count, deleted=index.deleted_count,
        capacity=index.capacity, applied_seq=applied_seq, created_at=time.time(),
        publish_seconds=round(time.monotonic() - started, 4), files=files,
    )


def _new_snapshot_id(applied_seq: int) -> str:
    return f"{applied_seq:012d}-{uuid.uuid4().hex[:8]}"


def _verify_folder(folder: Path, meta: SnapshotMeta) -> None:
    if set(meta.files) != {_INDEX_FILE, _DELETED_FILE}:
        raise SnapshotCorrupt(f"snapshot {meta.snapshot_id} lists unexpected files {sorted(meta.files)}")
    for name, expected in meta.files.items():
        path = folder / name
        if not path.exists():
            raise SnapshotCorrupt(f"{path} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise SnapshotCorrupt(f"{path} does not match its checksum")


def _load_folder(folder: Path, meta: SnapshotMeta, params: HnswParams) -> HnswIndex:
    graph = hnswlib.Index(space="ip", dim=meta.dim)
    try:
        graph.load_index(str(folder / _INDEX_FILE), max_elements=meta.capacity)
        deleted = np.load(folder / _DELETED_FILE, allow_pickle=False)
    except (RuntimeError, ValueError, OSError) as exc:
        raise SnapshotCorrupt(f"{folder} could not be loaded: {exc}") from exc
    stored = HnswParams(m=meta.m, ef_construction=meta.ef_construction, ef_search=params.ef_search)
    return HnswIndex(meta.identity, stored, graph=graph, deleted=deleted.tolist())


@contextmanager
def _folder_lock(folder: Path) -> Iterator[bool]:
    """An flock on a file in ``folder``: one holder among the processes of this machine."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "writer.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Snapshots(Protocol):
    """What the writer and the readers need of a place that holds one index's snapshots."""

    # A folder of this machine that belongs to the store: its snapshots, or its cache of them.
    root: Path

    def pointer_signature(self) -> str | None:
        """Changes whenever a new snapshot is published; cheap enough to call on every query."""

    def read_meta(self) -> SnapshotMeta | None:
        """The metadata of the newest published snapshot, read now; None before the first."""

    def publish(self, index: HnswIndex, *, applied_seq: int) -> SnapshotMeta: ...

    def verify(self, meta: SnapshotMeta) -> None:
        """Raise ``SnapshotCorrupt`` unless every file of the published snapshot matches its checksum."""

    def load(self, meta: SnapshotMeta, params: HnswParams) -> HnswIndex: ...

    def writer_lock(self) -> AbstractContextManager[bool]:
        """Yields True to the one process of this machine allowed to write, False (at once) to any other."""

    def remove(self) -> None:
        """Delete every snapshot of this store, and its folder."""


class SnapshotStore:
    """The folder that holds the published snapshots of one backbone's index, on one machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointer = root / _POINTER

    def pointer_signature(self) -> str | None:
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def read_meta(self) -> SnapshotMeta | None:
        try:
            raw = self.pointer.read_text()
        except FileNotFoundError:
            return None
        return _parse_meta(raw, str(self.pointer))

    def publish(self, index: HnswIndex, *, applied_seq: int) -> SnapshotMeta:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        snapshot_id = _new_snapshot_id(applied_seq)
        staging = self.root / f".{snapshot_id}.tmp"
        staging.mkdir()
        try:
            files = _save_checksummed(index, staging)
            os.rename(staging, self.root / snapshot_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        meta = _snapshot_meta(index, snapshot_id, applied_seq, started, files)
        tmp_pointer = self.root / f".{_POINTER}.{snapshot_id}.tmp"
        tmp_pointer.write_text(json.dumps(asdict(meta), indent=1))
        _fsync_path(tmp_pointer)
        os.replace(tmp_pointer, self.pointer)
        _fsync_path(self.root)
        self._prune(keep={snapshot_id})
        return meta

    def verify(self, meta: SnapshotMeta) -> None:
        _verify_folder(self.root / meta.snapshot_id, meta)

    def load(self, meta: SnapshotMeta, params: HnswParams) -> HnswIndex:
        self.verify(meta)
        return _load_folder(self.root / meta.snapshot_id, meta, params)

    def _prune(self, keep: set[str]) -> None:
        # A writer killed while publishing leaves its staging folder; the one writer is past that now.
        for stale in self.root.glob(".*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        # The previous snapshot stays for a reader that read CURRENT.json just before it changed.
        _remove_older_folders(self.root, keep)

    def writer_lock(self) -> AbstractContextManager[bool]:
        return _folder_lock(self.root)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_older_folders(root: Path, keep: set[str]) -> None:
    """Remove the snapshot folders under ``root`` but the two newest and those in ``keep``."""
    folders = []
    for path in root.iterdir():
        try:
            if path.is_dir() and not path.name.startswith("."):
                folders.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # another process of this machine removed it meanwhile
            continue
    for _, old in sorted(folders)[:-2]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


class ObjectSnapshotStore:
    """One index's snapshots in an S3 bucket, shared by every machine, with a cache folder on this one.

    ``publish`` uploads the snapshot's files under ``<prefix><snapshot id>/`` and then writes the
    ``<prefix>CURRENT.json`` object, with their sizes and checksums: a reader that reads the pointer
    finds every file it names. A reader polls the pointer at most every ``poll_seconds`` (a
    conditional GET on its ETag), downloads a new snapshot into a staging folder of the cache,
    verifies it and renames it into place; the newest cached snapshots stay, older ones are
    removed. The previous snapshot's objects stay in the bucket for a reader still downloading them.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, cache: Path, *, poll_seconds: float = 0.0) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"the key prefix must end with '/', not {prefix!r}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.root = cache
        self.pointer_key = f"{prefix}{_POINTER}"
        self.poll_seconds = poll_seconds
        self._pointer_lock = threading.Lock()
        self._etag: str | None = None
        self._pointer_body: bytes | None = None
        self._polled_at = -float("inf")
        self._failed_polls = 0

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _fetch_pointer(self) -> None:
        """Read the pointer object unless it is unchanged since the last read (then it costs a 304)."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._pointer_lock:
            options = {"IfNoneMatch": self._etag} if self._etag else {}
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.pointer_key, **options)
                body = answer["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("304", "NotModified"):
                    return
                if code in ("NoSuchKey", "404"):
                    self._etag, self._pointer_body = None, None
                    return
                raise SnapshotUnavailable(f"could not read {self._where(self.pointer_key)}: {exc}") from exc
            except BotoCoreError as exc:
                raise SnapshotUnavailable(f"could not read {self._where(self.pointer_key)}: {exc}") from exc
            self._etag, self._pointer_body = answer["ETag"], body

    def pointer_signature(self) -> str | None:
        """The pointer's ETag as of the last poll; polls when ``poll_seconds`` have passed since (longer
        after failures, up to a minute). A failed poll is logged and leaves the last one's answer."""
        backoff = min(60.0, self.poll_seconds * 2 ** self._failed_polls) if self._failed_polls else self.poll_seconds
        if time.monotonic() - self._polled_at < backoff:
            return self._etag
        self._polled_at = time.monotonic()
        try:
            self._fetch_pointer()
        except SnapshotUnavailable as exc:
            self._failed_polls += 1
            log.warning("Keeping the index snapshot in use: %s", exc)
        else:
            self._failed_polls = 0
        return self._etag

    def read_meta(self) -> SnapshotMeta | None:
        self._fetch_pointer()
        body = self._pointer_body
        return None if body is None else _parse_meta(body, self._where(self.pointer_key))

    def publish(self, index: HnswIndex, *, applied_seq: int) -> SnapshotMeta:
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self._current_snapshot_id()
        snapshot_id = _new_snapshot_id(applied_seq)
        staging = self.root / f".{snapshot_id}.tmp"
        staging.mkdir()
        try:
            files = _save_checksummed(index, staging)
            for name in files:
                self.client.upload_file(str(staging / name), self.bucket, f"{self.prefix}{snapshot_id}/{name}")
            meta = _snapshot_meta(index, snapshot_id, applied_seq, started, files)
            # Last: until this succeeds every reader, and the next writer, sees the previous snapshot.
            self.client.put_object(Bucket=self.bucket, Key=self.pointer_key, Body=json.dumps(asdict(meta), indent=1),
                                   ContentType="application/json")
            # This machine's readers need not download what it has just written.
            os.rename(staging, self.root / snapshot_id)
        except (BotoCoreError, ClientError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise SnapshotUnavailable(f"could not publish snapshot {snapshot_id} to {self._where(self.prefix)}: "
                                      f"{exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            self._prune_bucket(keep={snapshot_id} | ({previous} if previous else set()))
        except (BotoCoreError, ClientError) as exc:
            # Published all the same; the next publish removes what this one left.
            log.warning("Could not remove older snapshots from %s: %s", self._where(self.prefix), exc)
        self._prune_cache(keep={snapshot_id})
        return meta

    def _current_snapshot_id(self) -> str | None:
        try:
            meta = self.read_meta()
        except SnapshotCorrupt:
            return None
        return meta.snapshot_id if meta else None

    def _keys(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})

    def _prune_bucket(self, keep: set[str]) -> None:
        # Also the files of a publish that stopped before its pointer: no reader was ever sent to them.
        stale = [key for key in self._keys(self.prefix)
                 if "/" in key[len(self.prefix):] and key[len(self.prefix):].split("/", 1)[0] not in keep]
        self._delete_keys(stale)

    def _prune_cache(self, keep: set[str]) -> None:
        for staging in self.root.glob(".*.tmp"):
            try:
                # Another process of this machine may be downloading into its own, right now.
                if time.time() - staging.stat().st_mtime > _STALE_DOWNLOAD_SECONDS:
                    shutil.rmtree(staging, ignore_errors=True)
            except FileNotFoundError:
                continue
        _remove_older_folders(self.root, keep)

    def _download(self, meta: SnapshotMeta) -> Path:
        """Download the snapshot into a staging folder and verify it; the caller renames it into place."""
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import RetriesExceededError

        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{meta.snapshot_id}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir()
        try:
            for name in meta.files:
                key = f"{self.prefix}{meta.snapshot_id}/{name}"
                try:
                    self.client.download_file(self.bucket, key, str(staging / name))
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                        raise SnapshotCorrupt(f"{self._where(key)} is missing") from exc
                    raise SnapshotUnavailable(f"could not download {self._where(key)}: {exc}") from exc
                except (BotoCoreError, RetriesExceededError) as exc:
                    raise SnapshotUnavailable(f"could not download {self._where(key)}: {exc}") from exc
            try:
                _verify_folder(staging, meta)
            except SnapshotCorrupt as exc:
                raise SnapshotCorrupt(f"snapshot {meta.snapshot_id} downloaded from {self._where(self.prefix)} "
                                      f"is damaged: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def _cached(self, meta: SnapshotMeta) -> Path:
        folder = self.root / meta.snapshot_id
        if folder.is_dir():
            try:
                _verify_folder(folder, meta)
                return folder
            except SnapshotCorrupt as exc:
                log.warning("Downloading snapshot %s again: the cached copy is damaged: %s", meta.snapshot_id, exc)
                shutil.rmtree(folder, ignore_errors=True)
        staging = self._download(meta)
        try:
            os.rename(staging, folder)
        except OSError as exc:
            # Another process of this machine put the same snapshot there first: use that one.
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        return folder

    def verify(self, meta: SnapshotMeta) -> None:
        """Check the objects in the bucket, not this machine's cached copy: download them afresh."""
        staging = self._download(meta)
        folder = self.root / meta.snapshot_id
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)

    def load(self, meta: SnapshotMeta, params: HnswParams) -> HnswIndex:
        folder = self._cached(meta)
        try:
            index = _load_folder(folder, meta, params)
        except SnapshotCorrupt:
            if folder.is_dir():
                raise
            # Another process of this machine pruned it between the download and the load.
            index = _load_folder(self._cached(meta), meta, params)
        self._prune_cache(keep={meta.snapshot_id})
        return index

    def writer_lock(self) -> AbstractContextManager[bool]:
        return _folder_lock(self.root)

    def remove(self) -> None:
        self._delete_keys(list(self._keys(self.prefix)))
        shutil.rmtree(self.root, ignore_errors=True)


def exact_search(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product, for the rows that no snapshot holds yet."""
    k = min(k, len(ids))
    if k == 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.int64), empty.astype(np.float32)
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return ids[np.take_along_axis(top, order, axis=1)], np.take_along_axis(top_scores, order, axis=1)
