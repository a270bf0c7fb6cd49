"""How a Celery worker that takes the embedding queue starts: torch imported once before its pool
forks, the cores shared among its processes, and the model loaded in each process before its
first task. Connected as the search app starts (``search/apps.py``), before the worker sets up."""
from __future__ import annotations

import os

from celery.signals import celeryd_after_setup, worker_process_init
from celery.worker import WorkController
from django.conf import settings

from search.queues import embed_messages_waiting
from search.runtime import WORKER_PROCESSES_ENV, embedder_warm

# Set in a worker that embeds, for its pool processes (which inherit the environment).
EMBEDDING_WORKER_ENV = "LOOKALIKE_EMBEDDING_WORKER"


def in_embedding_worker() -> bool:
    """Whether this process runs the tasks of a worker that takes the embedding queue."""
    return os.environ.get(EMBEDDING_WORKER_ENV) == "1"


def embeddings_wait_for_this_worker() -> bool:
    """Whether this process has embeddings to do before anything that can wait: it belongs to a
    worker that takes the embedding queue, and a message waits there. A worker of the other
    queues alone never waits for them."""
    return in_embedding_worker() and (embed_messages_waiting() or 0) > 0


@celeryd_after_setup.connect
def _prepare_pool_processes(sender: str, instance: WorkController, **kwargs: object) -> None:
    # Read by each pool process when it loads the model (they inherit the environment).
    os.environ[WORKER_PROCESSES_ENV] = str(getattr(instance, "concurrency", 1) or 1)
    if settings.LOOKALIKE_EMBED_QUEUE in instance.app.amqp.queues.consume_from:
        # A worker that embeds imports torch once, before it forks: its pool processes then share
        # those pages and none spends seconds importing it on its first task. Only the import:
        # a process that has run torch's thread pools cannot safely fork.
        import core.embedding  # noqa: F401
        os.environ[EMBEDDING_WORKER_ENV] = "1"


@worker_process_init.connect
def _load_the_model(**kwargs: object) -> None:
    # Each pool process of a worker that embeds loads the model before it takes a task, rather
    # than on its first one: an upload to a freshly started site then waits for nothing.
    if in_embedding_worker():
        embedder_warm(gallery=True)
