"""This process's embedder and index reader, each made once and reused by every request and task."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from django.conf import settings

from search.changelog import DatabaseChangeSource
from search.embedding import Embedder, descriptor_identity, get_backbone
from search.identity import IndexIdentity
from search.index import HnswParams, SnapshotStore
from search.reader import IndexReader

log = logging.getLogger(__name__)

WORKER_PROCESSES_ENV = "LOOKALIKE_WORKER_PROCESSES"


def weights_dir() -> Path:
    """Where torchvision checkpoints live: its own cache layout, under TORCH_HOME."""
    return settings.TORCH_HOME / "hub" / "checkpoints"


def index_identity() -> IndexIdentity:
    return descriptor_identity(get_backbone(settings.LOOKALIKE_BACKBONE))


def index_params() -> HnswParams:
    return HnswParams(m=settings.LOOKALIKE_INDEX_M, ef_construction=settings.LOOKALIKE_INDEX_EF_CONSTRUCTION,
                      ef_search=settings.LOOKALIKE_INDEX_EF_SEARCH)


def snapshot_store() -> SnapshotStore:
    return SnapshotStore(settings.INDEX_DIR / settings.LOOKALIKE_BACKBONE)


@functools.cache
def embedder() -> Embedder:
    return Embedder(get_backbone(settings.LOOKALIKE_BACKBONE), weights_dir=weights_dir(),
                    device=settings.LOOKALIKE_DEVICE, batch_size=settings.LOOKALIKE_EMBED_BATCH_SIZE,
                    jpeg_decoder=settings.LOOKALIKE_JPEG_DECODER)


def _ask_writer_to_rebuild(_reason: str) -> None:
    # The reader has logged the reason; the writer rebuilds what it cannot use.
    from search.services import queue_index_sync

    queue_index_sync()


@functools.cache
def index_reader() -> IndexReader:
    identity = index_identity()
    return IndexReader(snapshot_store(), identity, index_params(), DatabaseChangeSource(identity),
                       on_unusable_snapshot=_ask_writer_to_rebuild)


def configure_worker_process() -> None:
    """Give each worker process its share of the cores: torch's default of one thread per core
    in every process oversubscribes the machine as soon as there are two processes."""
    processes = int(os.environ.get(WORKER_PROCESSES_ENV) or 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
