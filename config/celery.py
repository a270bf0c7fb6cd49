"""The Celery app: `celery -A config worker` runs the workers that embed images and keep the index.
What a worker that embeds does as it starts is search's (``search/worker.py``)."""
import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("lookalike")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _prepare_embedded_broker(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    if settings.EMBEDDED_BROKER:
        for folder in ("queue", "control"):
            (settings.BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs: object) -> None:
    # As Django does around each request: a connection older than CONN_MAX_AGE, or broken, is
    # closed, and the next query opens a new one (CELERY_DB_REUSE_MAX keeps Celery from closing
    # them all around every task).
    from django.db import close_old_connections

    close_old_connections()
