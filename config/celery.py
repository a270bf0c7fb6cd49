"""The Celery app: `celery -A config worker` runs the workers that embed images and keep the index."""
import os

from celery import Celery
from celery.signals import celeryd_after_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("lookalike")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _prepare_embedded_broker(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for folder in ("queue", "control"):
            (settings.BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)


@celeryd_after_setup.connect
def _remember_pool_size(sender: str, instance: object, **kwargs: object) -> None:
    from search.runtime import WORKER_PROCESSES_ENV

    # Read by each pool process when it loads the model (they inherit the environment).
    os.environ[WORKER_PROCESSES_ENV] = str(getattr(instance, "concurrency", 1) or 1)
