import io
import os
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command

from gallery import services
from gallery.models import Image
from gallery.services import images_upload
from gallery.unfinished import sweep_unfinished
from tests import images
from tests.conftest import media_files


def unfinished_lists() -> set[str]:
    return {name for name in media_files() if name.startswith("unfinished/")}


def originals() -> set[str]:
    return {name for name in media_files() if name.startswith("originals/")}


def uploads(*seeds: int) -> list[tuple[str, io.BytesIO]]:
    return [(f"picture-{seed}.jpg", io.BytesIO(images.jpeg(seed))) for seed in seeds]


@pytest.fixture
def killed_before_its_rows(monkeypatch):
    """Upload as a process does that dies once its originals are written, before its rows are
    committed: it deletes nothing and clears no list, as a SIGKILLed one would not."""

    def die(items, owner):
        raise KeyboardInterrupt

    def upload(*seeds: int) -> None:
        assert not unfinished_lists(), "a list left by another test"
        with monkeypatch.context() as patched:
            patched.setattr(services, "_store", die)
            patched.setattr(services, "delete_files", lambda names: None)
            patched.setattr(services, "unfinished_clear", lambda lists: None)
            with pytest.raises(KeyboardInterrupt):
                images_upload(uploads=uploads(*seeds), owner=None)

    yield upload
    sweep_unfinished(older_than=timedelta(0))


class TestUnfinishedUploads:
    def test_it_lists_a_batchs_originals_while_they_are_written_and_clears_the_list_once_stored(
            self, db, media_storage, monkeypatch):
        real_write = services._write_original
        listed_while_writing = []

        def write(spooled, name: str) -> str:
            [listing] = unfinished_lists()
            with default_storage.open(listing, "rb") as opened:
                listed_while_writing.append(name in opened.read().decode().split())
            return real_write(spooled, name)

        monkeypatch.setattr(services, "_write_original", write)
        results = images_upload(uploads=uploads(1, 2), owner=None)
        assert [result.status for result in results] == ["accepted", "accepted"]
        assert listed_while_writing == [True, True]
        assert unfinished_lists() == set()

    def test_it_clears_the_list_when_a_storage_failure_refuses_the_upload(self, db, monkeypatch):
        def fail(spooled, name: str) -> str:
            raise OSError("No space left on device")

        monkeypatch.setattr(services, "_write_original", fail)
        results = images_upload(uploads=uploads(1), owner=None)
        assert [result.code for result in results] == ["store_unavailable"]
        assert unfinished_lists() == set()

    def test_it_writes_no_list_for_a_batch_of_duplicates_only(self, db):
        images_upload(uploads=uploads(1), owner=None)
        results = images_upload(uploads=uploads(1), owner=None)
        assert [result.status for result in results] == ["duplicate"]
        assert unfinished_lists() == set()

    def test_the_sweep_removes_the_originals_of_a_batch_that_died_and_keeps_a_stored_ones(
            self, db, media_storage, killed_before_its_rows):
        before = originals()
        stored = images_upload(uploads=uploads(1), owner=None)[0].image
        killed_before_its_rows(2, 3)
        assert Image.objects.count() == 1
        assert len(originals() - before - {stored.original.name}) == 2
        assert len(unfinished_lists()) == 1

        assert sweep_unfinished(older_than=timedelta(0)) == 2
        assert originals() - before == {stored.original.name}
        assert stored.original.read() == images.jpeg(1)
        assert unfinished_lists() == set()
        assert sweep_unfinished(older_than=timedelta(0)) == 0

    def test_the_sweep_leaves_a_batch_that_may_still_be_running(self, db, killed_before_its_rows):
        killed_before_its_rows(2)
        before = media_files()
        assert sweep_unfinished() == 0
        assert media_files() == before

    def test_a_file_stored_again_after_the_crash_is_kept(self, db, killed_before_its_rows):
        """The same files imported again after the crash are new files with new names."""
        killed_before_its_rows(4)
        again = images_upload(uploads=uploads(4), owner=None)[0].image
        assert sweep_unfinished(older_than=timedelta(0)) == 1
        assert again.original.read() == images.jpeg(4)

    def test_upkeep_runs_the_sweep(self, db, clean_index, killed_before_its_rows):
        before = originals()
        killed_before_its_rows(5, 6)
        [listing] = unfinished_lists()
        an_hour_ago = time.time() - 3601
        os.utime(default_storage.path(listing), (an_hour_ago, an_hour_ago))
        out = io.StringIO()
        call_command("upkeep", stdout=out)
        assert "2 originals of uploads that died before they were stored removed" in out.getvalue()
        assert originals() == before
        assert unfinished_lists() == set()
