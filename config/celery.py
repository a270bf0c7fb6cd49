"""The Celery app: `celery -A config worker` runs the workers that embed images and keep the index."""
import os

from celery import Celery
from celery.signals import celeryd_after_setup, task_postrun, task_prerun, worker_process_init
from celery.worker import WorkController

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Set in a worker that embeds, for its pool processes (which inherit the environment).
EMBEDDING_WORKER_ENV = "LOOKALIKE_EMBEDDING_WORKER"

app = Celery("lookalike")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _prepare_embedded_broker(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    if settings.EMBEDDED_BROKER:
        for folder in ("queue", "control"):
            (settings.BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)


def in_embedding_worker() -> bool:
    """Whether this process runs the tasks of a worker that takes the embedding queue."""
    return os.environ.get(EMBEDDING_WORKER_ENV) == "1"


@celeryd_after_setup.connect
def _prepare_pool_processes(sender: str, instance: WorkController, **kwargs: object) -> None:
    from django.conf import settings

    from search.runtime import WORKER_PROCESSES_ENV

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
        from search.runtime import embedder_warm

        embedder_warm(gallery=True)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs: object) -> None:
    # As Django does around each request: a connection older than CONN_MAX_AGE, or broken, is
    # closed, and the next query opens a new one (CELERY_DB_REUSE_MAX keeps Celery from closing
    # them all around every task).
    from django.db import close_old_connections

    close_old_connections()
