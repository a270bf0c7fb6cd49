"""Which index generation serves searches: its folder, backbone and HNSW parameters.

A generation is one index folder under ``INDEX_DIR`` (a ``SnapshotStore``). ``ACTIVE.json``
names the generation in use; it is replaced atomically by a reindex once the new generation is
complete and checked, so every process switches on its next query. Without it (a fresh install)
the settings define the generation, in the folder named after the backbone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings

from search.backbones import descriptor_identity, get_backbone
from search.identity import IndexIdentity
from search.index import HnswParams, SnapshotStore

_ACTIVE = "ACTIVE.json"


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
    def store(self) -> SnapshotStore:
        return SnapshotStore(settings.INDEX_DIR / self.name)


def from_settings() -> Generation:
    return Generation(name=settings.LOOKALIKE_BACKBONE, backbone=settings.LOOKALIKE_BACKBONE,
                      m=settings.LOOKALIKE_INDEX_M, ef_construction=settings.LOOKALIKE_INDEX_EF_CONSTRUCTION)


def _pointer() -> Path:
    return settings.INDEX_DIR / _ACTIVE


_cache: dict[Path, tuple[tuple[int, int, int], Generation]] = {}


def active() -> Generation:
    """The generation that serves searches now; one stat() per call when nothing changed."""
    pointer = _pointer()
    try:
        st = pointer.stat()
    except FileNotFoundError:
        return from_settings()
    signature = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _cache.get(pointer)
    if cached and cached[0] == signature:
        return cached[1]
    data = json.loads(pointer.read_text())
    replaced = data.pop("replaced", None)
    generation = Generation(**data, replaced=tuple(replaced) if replaced else None)
    _cache[pointer] = (signature, generation)
    return generation


def activate(generation: Generation) -> None:
    """Make ``generation`` the one every process searches, atomically (write, fsync, rename)."""
    pointer = _pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staging = pointer.with_name(f".{_ACTIVE}.{os.getpid()}.tmp")
    with staging.open("w") as fh:
        json.dump(asdict(generation), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(staging, pointer)
    fd = os.open(pointer.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vectors_expected(backbone_and_version: tuple[str, str]) -> bool:
    """Whether stored vectors of another identity than the active one are there for a reason: a
    reindex is building an index of them, or they belong to the generation just replaced."""
    from search.reindex import reindex_in_progress

    if active().replaced == tuple(backbone_and_version):
        return True
    building = reindex_in_progress()
    return building is not None and (building.identity.backbone, building.identity.backbone_version) == tuple(
        backbone_and_version)
