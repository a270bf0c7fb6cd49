"""The worker's copies of an image: with media in a bucket of the gateway that will not do what is
asked, and the display copies that wait for the embeddings."""
import threading

import pytest
from django.db import connection, transaction

from gallery import copies
from gallery.models import Image
from gallery.tasks import make_display_copies
from tests import images
from tests.conftest import change_media_store, media_files, refuse_writes, store


def test_an_original_the_store_will_not_give_fails_this_attempt_only(db, s3_media, settings):
    image = store(images.jpeg(1))
    change_media_store(settings, LOOKALIKE_S3_SECRET_ACCESS_KEY="not-the-key")
    batch = copies.originals_decode([image], min_side=0)
    assert list(batch.failed) == [image.pk] and not batch.damaged and not batch.pictures
    assert batch.failed[image.pk].startswith("The stored original could not be read: ")
    assert copies.images_make_display_copies(image_ids=[image.pk]) == 0
    image.refresh_from_db()
    assert (image.thumbnail.name, image.display.name) == ("", "")


def test_a_thumbnail_the_store_will_not_take_fails_this_attempt_only(db, s3_media):
    taken, refused = store(images.jpeg(2), "taken.jpg"), store(images.jpeg(3), "refused.jpg")
    refused_thumbnail = copies.copy_name(refused.original.name, "thumbs")
    refuse_writes(s3_media, refused_thumbnail)
    batch = copies.originals_decode([taken, refused], min_side=0)
    assert list(batch.pictures) == [taken.pk] and not batch.damaged
    assert batch.failed[refused.pk].startswith("The thumbnail could not be written: ")
    assert Image.objects.get(pk=taken.pk).thumbnail.name == copies.copy_name(taken.original.name, "thumbs")
    assert Image.objects.get(pk=refused.pk).thumbnail.name == ""


def indexed(count: int) -> list[Image]:
    """Stored images marked indexed, as the embedding worker leaves them before their display copies."""
    stored = [store(images.jpeg(i), f"indexed-{i}.jpg") for i in range(count)]
    Image.objects.filter(pk__in=[image.pk for image in stored]).update(state=Image.State.INDEXED)
    return stored


def lacking_display() -> set[int]:
    return set(Image.objects.filter(display="").values_list("id", flat=True))


def test_the_catch_up_makes_the_display_copies_of_indexed_images_only(db):
    done = indexed(3)
    queued = store(images.jpeg(7), "queued.jpg")
    assert copies.display_copies_catch_up(pause=lambda: False) == 3
    assert lacking_display() == {queued.pk}
    for image in Image.objects.filter(pk__in=[image.pk for image in done]):
        assert image.display.name == copies.copy_name(image.original.name, "display")
        assert image.display.name in media_files()
    assert copies.display_copies_missing() == 0


def test_the_catch_up_stops_while_embeddings_wait_and_queues_one_for_the_rest(
        db, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(copies, "DISPLAY_COPIES_AT_ONCE", 2)
    sent: list[tuple] = []
    monkeypatch.setattr(make_display_copies, "delay", lambda *ids: sent.append(ids))
    stored = indexed(5)
    looks = iter([False, True])
    with django_capture_on_commit_callbacks(execute=True):
        assert copies.display_copies_catch_up(pause=lambda: next(looks)) == 2
    assert sent == [()], "the waiting embeddings may find nothing to do: the rest must not wait for upkeep"
    assert lacking_display() == {image.pk for image in stored[2:]}
    with django_capture_on_commit_callbacks(execute=True):
        assert copies.display_copies_catch_up(pause=lambda: False) == 3
    assert not lacking_display()
    with django_capture_on_commit_callbacks(execute=True):
        assert copies.display_copies_catch_up(pause=lambda: True) == 0
    assert sent == [()], "a catch-up with nothing left to make neither waits nor queues another"


def test_two_catch_ups_at_once_share_the_work(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes no row locks: two catch-ups there may both make a copy, which is harmless")
    stored = indexed(4)
    held = [image.pk for image in stored[:2]]
    locked, release = threading.Event(), threading.Event()

    def other_catch_up_holding_two() -> None:
        try:
            with transaction.atomic():
                list(Image.objects.select_for_update().filter(pk__in=held))
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    other = threading.Thread(target=other_catch_up_holding_two)
    other.start()
    try:
        assert locked.wait(30)
        assert copies.display_copies_catch_up(pause=lambda: False) == 2
    finally:
        release.set()
        other.join()
    assert lacking_display() == set(held)
