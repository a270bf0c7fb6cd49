"""Uploads going through a real Celery worker process and the real index, searched from other processes."""
import json
import os
import re
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageEnhance, ImageOps

from gallery.models import Image
from search import runtime
from search.changelog import last_seq
from tests import images
from tests.conftest import manage, media_files, upload_file, wait_for

pytestmark = pytest.mark.worker

HOSTILE = images.BENCH_IMAGES.parent / "hostile"


def states(ids) -> set[str]:
    return set(Image.objects.filter(pk__in=list(ids)).values_list("state", flat=True))


def wait_until_settled(ids, timeout: float = 120) -> None:
    wait_for(lambda: states(ids) <= {Image.State.INDEXED, Image.State.FAILED}, timeout, message="images to settle")


def search_elsewhere(*paths: Path, k: int = 5) -> list[dict]:
    out = manage("search_image", *map(str, paths), "--k", str(k), "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_an_upload_is_embedded_by_the_worker_and_found_from_another_process(media_worker, alice_client, tmp_path):
    worker = media_worker
    files = [upload_file(f"shot-{i}.jpg", images.jpeg(i)) for i in range(3)]
    reply = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json").json()
    ids = [r["image"]["id"] for r in reply["results"]]
    wait_until_settled(ids)
    assert states(ids) == {Image.State.INDEXED}, worker.log()[-3000:]
    # The worker read the originals from the media storage of the test and wrote the copies beside them.
    wait_for(lambda: not Image.objects.filter(pk__in=ids, display="").exists(), 60, message="the display copies")
    for image in Image.objects.filter(pk__in=ids):
        assert {image.original.name, image.thumbnail.name, image.display.name} <= media_files()
        for url in (image.thumbnail_url, image.display_url):
            response = alice_client.get(url)
            assert (response.status_code, response["Content-Type"]) == (200, "image/jpeg"), url

    query = tmp_path / "query.jpg"
    query.write_bytes(images.jpeg(1))
    [row] = search_elsewhere(query)
    assert row["results"][0]["id"] == ids[1]
    assert row["results"][0]["original_name"] == "shot-1.jpg"

    # The worker's index writer catches up with the change log and publishes a snapshot.
    store = runtime.snapshot_store()
    wait_for(lambda: (meta := store.read_meta()) and meta.applied_seq == last_seq(), 30, message="a snapshot")
    assert store.read_meta().count == 3


def test_the_state_feed_shows_the_upload_becoming_indexed(worker, alice_client):
    reply = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("a.jpg", images.jpeg(5))]},
                              HTTP_ACCEPT="application/json").json()
    image_id = reply["results"][0]["image"]["id"]

    def state() -> str:
        return alice_client.get(reverse("gallery:states"), {"ids": image_id}).json()["images"][0]["state"]

    wait_for(lambda: state() == "indexed", 60, message="the state feed to say indexed")


def test_import_images_waits_for_the_worker_and_summarises(media_worker, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(images.jpeg(10 + i))
    (folder / "again.jpg").write_bytes(images.jpeg(10))
    (folder / "broken.png").write_bytes(images.png(1)[:200])
    proc = manage("import_images", str(folder), "--wait", check=False)
    assert proc.returncode == 1, proc.stderr
    # Its header is sound: stored, then found damaged by the worker's decode.
    assert proc.stdout.strip() == "6 files: 5 stored (4 indexed, 1 failed), 1 duplicates, 0 refused."
    assert "failed: broken.png: The file is damaged or truncated" in proc.stderr and "(damaged)" in proc.stderr
    assert Image.objects.filter(state=Image.State.INDEXED).count() == 4
    assert Image.objects.get(original_name="broken.png").error_code == "damaged"


def test_an_edited_copy_of_a_photo_finds_its_original(worker, tmp_path):
    originals = [images.bench_image(category, n) for category in ("cat", "dog", "squirrel") for n in range(1, 11)]
    folder = tmp_path / "bench"
    folder.mkdir()
    for path in originals:
        (folder / path.name).write_bytes(path.read_bytes())
    manage("import_images", str(folder), "--wait")
    assert Image.objects.filter(state=Image.State.INDEXED).count() == 30
    # The store batch of 30 went out as one message, which the worker turned into one per batch of 8.
    assert "search.send_embedding_batches" in tasks_run(worker.log())
    original = PILImage.open(images.bench_image("dog", 3)).convert("RGB")
    w, h = original.size
    edited = ImageEnhance.Brightness(ImageOps.mirror(original.crop((w // 10, h // 10, w, h)))).enhance(1.3)
    query = tmp_path / "edited.jpg"
    edited.save(query, quality=40)
    [row] = search_elsewhere(query)
    assert row["results"][0]["original_name"] == "dog-0003.jpg"


def test_a_deleted_image_disappears_from_every_process_at_once(worker, alice_client, tmp_path):
    reply = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("gone.jpg", images.jpeg(20)),
                                                                    upload_file("kept.jpg", images.jpeg(21))]},
                              HTTP_ACCEPT="application/json").json()
    gone, kept = (r["image"]["id"] for r in reply["results"])
    wait_until_settled([gone, kept])
    query = tmp_path / "q.jpg"
    query.write_bytes(images.jpeg(20))
    assert search_elsewhere(query)[0]["results"][0]["id"] == gone
    alice_client.post(reverse("gallery:delete", args=[gone]))
    assert [r["id"] for r in search_elsewhere(query)[0]["results"]] == [kept]


@pytest.mark.skipif(not HOSTILE.is_dir(), reason="needs ../shared/bench/hostile beside the project")
def test_the_worker_survives_every_hostile_file(worker, tmp_path):
    proc = manage("import_images", str(HOSTILE), "--recursive", "--wait", "--timeout", "600", check=False,
                  timeout=900)
    summary = proc.stdout.strip().splitlines()[-1]
    files = sum(1 for p in HOSTILE.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert summary.startswith(f"{files} files")
    assert "refused" in summary
    assert not states(Image.objects.values_list("pk", flat=True)) - {Image.State.INDEXED, Image.State.FAILED}
    assert worker.process.poll() is None, "the worker is still running"
    # ...and still does its job.
    (tmp_path / "after.jpg").write_bytes(images.jpeg(77))
    manage("import_images", str(tmp_path / "after.jpg"), "--wait", "--timeout", "120")
    assert Image.objects.get(original_name="after.jpg").state == Image.State.INDEXED


def test_the_worker_uses_the_broker_this_run_is_configured_for(worker):
    from django.conf import settings

    expected = "redis" if os.environ.get("REDIS_URL") else "filesystem"
    assert settings.CELERY_BROKER_URL.startswith(expected)
    assert connection.vendor == ("postgresql" if os.environ.get("DATABASE_URL") else "sqlite")


def tasks_run(log: str) -> set[str]:
    """The names of the tasks a worker's log shows it received."""
    return set(re.findall(r"Task ([\w.]+)\[[0-9a-f-]+\] received", log))


def loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_each_kind_of_worker_takes_only_the_tasks_of_its_queue(worker, tmp_path):
    """The workers of docs/scaling.md, each on its own queue: the embedding worker embeds and nothing
    else, the index writer publishes, the background worker makes the display copy and the tag
    suggestions."""
    from django.conf import settings

    from tests.conftest import Worker, empty_index_folder, store

    worker.stop()
    # The session's worker, which also wrote the index, may have run an index sync left by an
    # earlier test after this test's folder was emptied: start again from no snapshot.
    empty_index_folder()
    earlier_log = len(worker.log()) if worker.log_path.exists() else 0
    worker.start(f"--queues={settings.LOOKALIKE_EMBED_QUEUE}", "--hostname=embed@%h")
    writer = Worker(tmp_path / "writer.log")
    background = Worker(tmp_path / "background.log")
    try:
        image = store(images.jpeg(7), "only-embedded.jpg")
        wait_until_settled([image.pk])
        assert states([image.pk]) == {Image.State.INDEXED}
        # The change waits in the writer's queue and the display copy in the background queue.
        assert runtime.snapshot_store().read_meta() is None
        image.refresh_from_db()
        assert image.thumbnail and not image.display
        embedding_log = worker.log()[earlier_log:]
        assert tasks_run(embedding_log) == {"search.embed_image"}

        writer.start(f"--queues={settings.LOOKALIKE_INDEX_QUEUE}", "--pool=solo", "--hostname=index@%h")
        background.start(f"--queues={settings.LOOKALIKE_BACKGROUND_QUEUE}", "--hostname=background@%h")
        meta = wait_for(lambda: (m := runtime.snapshot_store().read_meta()) and m.applied_seq == last_seq() and m,
                        60, message="the index writer to publish")
        assert meta.count == 1
        wait_for(lambda: Image.objects.exclude(display="").filter(pk=image.pk).exists(), 60,
                 message="the background worker to make the display copy")
        wait_for(lambda: "Task search.suggest_tags[" in background.log(), 60,
                 message="the background worker to suggest tags")
        assert tasks_run(writer.log()) == {"search.sync_index"}
        taken_in_background = tasks_run(background.log())
        assert {"gallery.make_display_copies", "search.suggest_tags"} <= taken_in_background
        assert not {"search.embed_image", "search.sync_index"} & taken_in_background
        # The writer never loads torch; the embedding worker loads it once, before its pool forks.
        assert not loads_torch(writer.process.pid)
        assert loads_torch(worker.process.pid)
    finally:
        background.stop()
        writer.stop()
        worker.stop()
        worker.start()
