"""The model loads as a process starts: in each pool process of a worker that embeds, before its
first task, and in a web process in the background, without holding up its start."""
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, Worker, process_env, wait_for

LOADED = "Model loaded and run once"


@pytest.mark.worker
def test_each_pool_process_of_an_embedding_worker_loads_the_model_before_any_task(transactional_db, tmp_path):
    worker = Worker(tmp_path / "worker.log")
    worker.start()
    try:
        # Two pool processes (the fixture's --concurrency=2), and no task sent.
        wait_for(lambda: worker.log().count(LOADED) == 2, timeout=300, message="both pool processes to load the model")
    finally:
        worker.stop()
    assert "Received task" not in worker.log()


def test_a_web_process_loads_the_model_in_the_background_once_it_serves(db):
    probe = ("import threading, config.wsgi; "
             "warming = [t for t in threading.enumerate() if t.name == 'embedder-warm']; "
             "print('answering while loading:', bool(warming) and warming[0].is_alive(), flush=True); "
             "[t.join() for t in warming]")
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=process_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "answering while loading: True" in done.stdout
    assert LOADED in done.stderr, done.stderr


WHAT_A_PROCESS_LOADS = """
import sys

import django

django.setup()
import gallery.services, search.queries, search.runtime, search.selectors, search.services, search.tasks

print(search.runtime.index_identity().describe())
print("torch" in sys.modules)
"""


def test_the_site_starts_and_knows_its_index_without_loading_torch():
    done = subprocess.run([sys.executable, "-c", WHAT_A_PROCESS_LOADS], cwd=PROJECT_ROOT, env=process_env(),
                          capture_output=True, text=True, check=True)
    identity, torch_loaded = done.stdout.split("\n")[:2]
    assert "efficientnet_lite0" in identity
    assert torch_loaded == "False", "the index writer, the import command and a web process start without torch"
