"""Which index generation serves searches: its snapshots, backbone and HNSW parameters, and the
lock that lets one process at a time write its index.

A generation is one index: a folder under ``INDEX_DIR`` (a ``SnapshotStore``) on one machine, or
a key prefix ``index/<name>/`` in the object store (an ``ObjectSnapshotStore``) when
``LOOKALIKE_S3_BUCKET`` is set. The database names the generation in use (``ActiveGeneration``,
one row): every host reads the same answer, and a reindex switches it in the same transaction
that settles the images embedded meanwhile. Without the row (a fresh install) the settings
define the generation, named after the backbone.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections

from config.object_store import object_store_bucket, snapshot_store_client
from core.backbones import descriptor_identity, get_backbone
from core.identity import IndexIdentity
from core.index import HnswParams, ObjectSnapshotStore, Snapshots, SnapshotStore
from jobs.models import Job
from search.models import ActiveGeneration

# Where the generations' snapshots live in the bucket, each under "<prefix><name>/".
OBJECT_PREFIX = "index/"


@dataclass(frozen=True)
class Generation:
    name: str
    backbone: str
    m: int
    ef_construction: int
    # The identity this generation replaced: its vectors may remain until the reindex purges them.
    replaced: tuple[str, str] | None = field(default=None)

    @property
    def identity(self) -> IndexIdentity:
        return descriptor_identity(get_backbone(self.backbone))

    @property
    def params(self) -> HnswParams:
        return HnswParams(m=self.m, ef_construction=self.ef_construction,
                          ef_search=settings.LOOKALIKE_INDEX_EF_SEARCH)

    @property
    def store(self) -> Snapshots:
        return store_for(self.name)

    def writer_lock(self) -> AbstractContextManager[bool]:
        """Yields True to the one process allowed to write this generation's index, False (at once) to
        any other: on PostgreSQL across every host, on SQLite among the processes of this machine."""
        if connection.vendor == "postgresql":
            return _advisory_lock(f"lookalike-index-writer:{self.name}")
        return self.store.writer_lock()


def store_for(name: str) -> Snapshots:
    if bucket := object_store_bucket():
        return ObjectSnapshotStore(snapshot_store_client(), bucket, f"{OBJECT_PREFIX}{name}/",
                                   settings.INDEX_CACHE_DIR / name,
                                   poll_seconds=settings.LOOKALIKE_SNAPSHOT_POLL_SECONDS)
    return SnapshotStore(settings.INDEX_DIR / name)


def from_settings() -> Generation:
    return Generation(name=settings.LOOKALIKE_BACKBONE, backbone=settings.LOOKALIKE_BACKBONE,
                      m=settings.LOOKALIKE_INDEX_M, ef_construction=settings.LOOKALIKE_INDEX_EF_CONSTRUCTION)


def active() -> Generation:
    """The generation that serves searches now: one query by primary key."""
    row = ActiveGeneration.objects.filter(pk=ActiveGeneration.ONLY_ID).first()
    if row is None:
        return from_settings()
    replaced = (row.replaced_backbone, row.replaced_version) if row.replaced_backbone else None
    return Generation(name=row.name, backbone=row.backbone, m=row.m, ef_construction=row.ef_construction,
                      replaced=replaced)


def activate(generation: Generation) -> None:
    """Make ``generation`` the one every process searches, on every host, when the transaction commits."""
    replaced_backbone, replaced_version = generation.replaced or ("", "")
    ActiveGeneration.objects.update_or_create(
        pk=ActiveGeneration.ONLY_ID,
        defaults={"name": generation.name, "backbone": generation.backbone, "m": generation.m,
                  "ef_construction": generation.ef_construction, "replaced_backbone": replaced_backbone,
                  "replaced_version": replaced_version})


def prune(*, keep: set[str]) -> None:
    """Delete the snapshots of every generation but those in ``keep``: their folders on this machine
    (index folders and caches), and their objects in the bucket when there is one."""
    for parent in (settings.INDEX_DIR, settings.INDEX_CACHE_DIR):
        if parent.is_dir():
            for folder in parent.iterdir():
                if folder.is_dir() and not folder.name.startswith(".") and folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
    if bucket := object_store_bucket():
        pages = snapshot_store_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=OBJECT_PREFIX, Delimiter="/")
        names = {common["Prefix"][len(OBJECT_PREFIX):-1] for page in pages for common in page.get("CommonPrefixes", [])}
        for name in names - keep:
            store_for(name).remove()


def built_by(job: Job) -> Generation:
    """The generation that a reindex job builds."""
    return Generation(name=f"{job.params['backbone']}-g{job.pk}", backbone=job.params["backbone"],
                      m=job.params["m"], ef_construction=job.params["ef_construction"])


def reindex_in_progress(*, lock: bool = False) -> Generation | None:
    """The generation a queued or running reindex is building, unless it was asked to stop.

    With ``lock`` (inside a transaction) the job's row stays locked until commit: the switch of
    generations and a cancel wait for it (see ``services.identities_in_use``).
    """
    jobs = Job.objects.filter(kind=Job.Kind.REINDEX, state__in=Job.ACTIVE_STATES, cancel_requested=False)
    job = (jobs.select_for_update() if lock else jobs).order_by("-id").first()
    return built_by(job) if job else None


def vectors_expected(backbone_and_version: tuple[str, str]) -> bool:
    """Whether stored vectors of another identity than the active one are there for a reason: a
    reindex is building an index of them, or they belong to the generation just replaced."""
    if active().replaced == tuple(backbone_and_version):
        return True
    building = reindex_in_progress()
    return building is not None and (building.identity.backbone, building.identity.backbone_version) == tuple(
        backbone_and_version)


# A writer whose host stops answering is taken for dead by PostgreSQL after about this long, and
# its lock released: idle seconds, then probes every interval, given up after count of them.
_KEEPALIVE = {"tcp_keepalives_idle": 20, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 4}


@contextmanager
def _advisory_lock(name: str) -> Iterator[bool]:
    """A session-level PostgreSQL advisory lock on a connection of its own: not Django's, which
    ``CONN_MAX_AGE`` and ``close_old_connections`` may close or hand to other code while the lock is
    held. A holder that dies loses its connection, and with it the lock."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
    own = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with own.cursor() as cursor:
            for setting, value in _KEEPALIVE.items():
                cursor.execute(f"SET {setting} = {int(value)}")
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            held = bool(cursor.fetchone()[0])
        yield held
        if held:
            with own.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    finally:
        own.close()
