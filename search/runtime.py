"""This process's embedders and index reader, made once and reused by every request and task
(the reader once per index generation: a reindex that switches generations replaces it)."""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from core.backbones import get_backbone
from core.identity import IndexIdentity
from core.index import HnswParams, Snapshots
from core.reader import IndexReader
from search import generations
from search.changelog import DatabaseChangeSource
from search.queues import queue_index_sync

if TYPE_CHECKING:
    from core.embedding import Embedder

log = logging.getLogger(__name__)

WORKER_PROCESSES_ENV = "LOOKALIKE_WORKER_PROCESSES"


def weights_dir() -> Path:
    """Where torchvision checkpoints live: its own cache layout, under TORCH_HOME."""
    return settings.TORCH_HOME / "hub" / "checkpoints"


def index_identity() -> IndexIdentity:
    """What the vectors of the index that serves searches mean (see ``search.generations``)."""
    return generations.active().identity


def index_params() -> HnswParams:
    return generations.active().params


def snapshot_store() -> Snapshots:
    return generations.active().store


def embedder() -> Embedder:
    return embedder_for(generations.active().backbone)


@functools.cache
def embedder_for(backbone: str) -> Embedder:
    # torch is imported here, by the processes that embed, and by no other.
    import torch

    from core.embedding import Embedder

    if processes := int(os.environ.get(WORKER_PROCESSES_ENV) or 0):
        # A worker's processes share the cores: torch's default of one thread per core in
        # every process oversubscribes the machine as soon as there are two processes.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    return Embedder(get_backbone(backbone), weights_dir=weights_dir(),
                    device=settings.LOOKALIKE_DEVICE, batch_size=settings.LOOKALIKE_EMBED_BATCH_SIZE,
                    jpeg_decoder=settings.LOOKALIKE_JPEG_DECODER)


def embedder_warm(*, gallery: bool = False) -> None:
    """Load the model of the index in service and run it once, as a query (a picture and its
    mirror image) or with ``gallery`` as an image to index, so that this process's first search
    or task does not wait seconds for it. Called as a process starts (``search.worker``,
    ``config.wsgi``); a failure is logged and left for the first real use to report."""
    from PIL import Image

    started = time.perf_counter()
    try:
        blank = Image.new("RGB", (64, 64))
        embedder().describe([blank] if gallery else [blank, blank], gallery=gallery)
    except Exception:
        log.warning("Could not load the model ahead of its first use; it loads then instead.", exc_info=True)
        return
    log.info("Model loaded and run once in %.1f s", time.perf_counter() - started)


def embedder_warm_in_background() -> threading.Thread:
    """``embedder_warm`` in a thread of its own: a web process answers (its readiness checks too)
    while the model loads. A search that comes during the load loads the model too, as before."""
    thread = threading.Thread(target=embedder_warm, name="embedder-warm", daemon=True)
    thread.start()
    return thread


def _ask_writer_to_rebuild(_reason: str) -> None:
    # The reader has logged the reason; the writer checks the snapshot and rebuilds what it cannot use.
    queue_index_sync(verify=True)


_reader: dict[str, tuple[generations.Generation, IndexReader]] = {}
_reader_lock = threading.Lock()


def index_reader() -> IndexReader:
    """The reader of the active generation; when a reindex switches generations, the next query
    gets a reader of the new one and the old one is dropped with its loaded index."""
    generation = generations.active()
    with _reader_lock:
        current = _reader.get("active")
        if current is None or current[0] != generation:
            identity = generation.identity
            reader = IndexReader(generation.store, identity, generation.params, DatabaseChangeSource(identity),
                                 on_unusable_snapshot=_ask_writer_to_rebuild, load_in_background=True)
            current = _reader["active"] = (generation, reader)
        return current[1]


def drop_index_reader() -> None:
    """Forget this process's reader, so that the next query loads the index afresh: for a process
    whose database was replaced under it, as between tests."""
    with _reader_lock:
        _reader.clear()
