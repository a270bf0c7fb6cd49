"""The Celery app's hooks around tasks, as a worker runs them."""
from collections.abc import Iterator

import pytest
from celery import signals
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from config.celery import app
from search.tasks import embed_image


@pytest.fixture
def worker_fixup() -> Iterator[None]:
    """Celery's Django hooks, which a worker installs as it starts, for this test only."""
    fixup = DjangoWorkerFixup(app).install()
    yield
    signals.task_prerun.disconnect(fixup.on_task_prerun)
    signals.task_postrun.disconnect(fixup.on_task_postrun)
    signals.worker_process_init.disconnect(fixup.on_worker_process_init)
    signals.beat_embedded_init.disconnect(fixup.close_database)


def run_a_task() -> None:
    """What a worker does around a task, without its work."""
    signals.task_prerun.send(sender=embed_image, task_id="t", task=embed_image, args=(), kwargs={})
    signals.task_postrun.send(sender=embed_image, task_id="t", task=embed_image, args=(), kwargs={}, retval=None)


@pytest.fixture
def kept_connection(transactional_db) -> Iterator[None]:
    # As on a site (config.settings.base); the test settings close connections at once.
    before = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = 60
    connection.close()
    yield
    connection.settings_dict["CONN_MAX_AGE"] = before
    connection.close()


def test_it_keeps_the_database_connection_from_one_task_to_the_next(kept_connection, worker_fixup):
    connection.ensure_connection()
    session = connection.connection
    run_a_task()
    run_a_task()
    assert connection.connection is session


def test_it_opens_a_new_connection_once_the_last_one_is_too_old(kept_connection, worker_fixup):
    connection.ensure_connection()
    session = connection.connection
    connection.close_at = 0.0  # as if CONN_MAX_AGE had passed
    run_a_task()
    assert connection.connection is None
    connection.ensure_connection()
    assert connection.connection is not session
