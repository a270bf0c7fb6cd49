"""A reindex run by a real worker while searches go on, and one whose worker is killed midway."""
import signal
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection

from core.backbones import get_backbone
from gallery.models import Image
from jobs import services as job_services
from jobs.models import Job
from search import generations, index_writer, reindex, runtime, selectors
from search.models import Embedding
from tests import images
from tests.conftest import store, wait_for
from tests.search.test_reindex import install_untrained_resnet50

pytestmark = pytest.mark.worker


@pytest.fixture
def resnet50_for_the_worker():
    """The worker reads weights from the shared data folder, as it would in production."""
    install_untrained_resnet50()
    yield
    get_backbone("resnet50").torchvision.checkpoint_path(runtime.weights_dir()).unlink(missing_ok=True)
    runtime.embedder_for.cache_clear()


def indexed_gallery(count: int) -> list[Image]:
    stored = [store(images.jpeg(i), f"picture-{i}.jpg") for i in range(count)]
    ids = [image.pk for image in stored]
    wait_for(lambda: Image.objects.filter(pk__in=ids, state=Image.State.INDEXED).count() == count, 120,
             message="the gallery to be indexed")
    index_writer.index_sync()
    return list(Image.objects.filter(pk__in=ids).order_by("id"))


def job_state(job: Job) -> Job:
    job.refresh_from_db()
    return job


def test_searches_go_on_and_never_show_a_hidden_image_while_a_reindex_swaps_the_index(
        worker, resnet50_for_the_worker):
    gallery = indexed_gallery(16)
    hidden = gallery[5]
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    before = generations.active()
    job = reindex.reindex_start(backbone="resnet50", batch_size=4)
    failures: list[str] = []
    searched: list[str] = []
    done = threading.Event()

    def search_continuously() -> None:
        try:
            while not done.is_set():
                for image in gallery[:8]:
                    if image == hidden:
                        continue
                    results = selectors.similar_to_image(image, k=20)
                    ids = [r.image.pk for r in results]
                    if hidden.pk in ids:
                        failures.append(f"the hidden image was shown for #{image.pk}")
                    if len(ids) != len(gallery) - 2:
                        failures.append(f"{len(ids)} results for #{image.pk}")
                searched.append(generations.active().name)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    searcher = threading.Thread(target=search_continuously)
    searcher.start()
    try:
        wait_for(lambda: not job_state(job).is_active, 240, 0.5, "the reindex to end")
    finally:
        done.set()
        searcher.join(60)
    assert job.state == Job.State.SUCCEEDED, (job.last_error, worker.log()[-3000:])
    assert failures == []
    after = generations.active()
    assert after.backbone == "resnet50" and after != before
    assert searched.count(before.name) > 0, "searches ran while the reindex was building"
    assert runtime.index_identity().backbone == "resnet50"
    vectors = Embedding.objects.of(runtime.index_identity()).filter(image__in=gallery[:3]).order_by("image_id")
    found = selectors.similar_to_vectors(np.stack([e.as_array() for e in vectors]), k=1)
    assert [row[0].image.pk for row in found] == [image.pk for image in gallery[:3]]


def test_a_reindex_whose_worker_is_killed_resumes_where_it_stopped(worker, resnet50_for_the_worker):
    gallery = indexed_gallery(24)
    before = generations.active()
    job = reindex.reindex_start(backbone="resnet50", batch_size=4)
    wait_for(lambda: job_state(job).checkpoint.get("embedded", 0) >= 4, 180, 0.05, "a first batch")
    worker.stop(signal.SIGKILL)
    killed_at = job_state(job).checkpoint["embedded_after"]
    assert job.state == Job.State.RUNNING and job.checkpoint["embedded"] < len(gallery)
    assert generations.active() == before, "the current index serves while the reindex is unfinished"
    worker.start()
    time.sleep(0.5)
    [resumed] = job_services.jobs_resume_stalled(silent_for=timedelta(0))
    assert resumed.pk == job.pk
    wait_for(lambda: not job_state(job).is_active, 240, 0.5, "the resumed reindex to end")
    assert job.state == Job.State.SUCCEEDED, (job.last_error, worker.log()[-3000:])
    assert f"Resuming the embedding for resnet50-g{job.pk} after image #{killed_at}" in worker.log()
    assert job.checkpoint["embedded"] == len(gallery)
    assert generations.active().backbone == "resnet50"
    assert generations.active().store.read_meta().count == len(gallery)
