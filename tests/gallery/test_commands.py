import io
import os

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from gallery.management.commands import import_images
from gallery.models import Image
from tests import images
from tests.conftest import media_files, store


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
        status = 0
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(images.jpeg(1))
    (tmp_path / "b.png").write_bytes(images.png(2))
    (tmp_path / "copy-of-a.jpg").write_bytes(images.jpeg(1))
    (tmp_path / ".hidden.jpg").write_bytes(images.jpeg(3))
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "c.jpg").write_bytes(images.jpeg(4))
    return tmp_path


class TestImportImages:
    def test_it_imports_the_files_of_a_folder(self, db, folder, media_storage):
        status, out, err = run("import_images", str(folder))
        assert status == 0
        assert out.strip() == "3 files: 2 stored, 1 duplicates, 0 refused."
        assert "duplicate: " in err and "copy-of-a.jpg" in err and "Identical to image #" in err
        assert sorted(Image.objects.values_list("original_name", flat=True)) == ["a.jpg", "b.png"]
        stored = {image.original.name: image.original.read() for image in Image.objects.all()}
        assert media_files() == set(stored)
        assert sorted(stored.values()) == sorted([images.jpeg(1), images.png(2)])

    def test_it_descends_into_folders_when_recursive(self, db, folder):
        status, out, _ = run("import_images", str(folder), "--recursive")
        assert status == 0
        assert Image.objects.filter(original_name="c.jpg").exists()
        assert out.startswith("4 files: 3 stored")

    def test_refused_files_are_named_with_their_reason_and_fail_the_command(self, db, folder):
        (folder / "notes.jpg").write_text("not a picture")
        (folder / "empty.png").write_bytes(b"")
        status, out, err = run("import_images", str(folder))
        assert status == 1
        assert "2 refused" in out
        assert "refused: " in err and "notes.jpg: The file is not an image" in err
        assert "empty.png: The file is empty." in err
        assert Image.objects.count() == 2

    def test_it_stores_with_several_processes_and_reports_the_same(self, transactional_db, folder, media_storage):
        (folder / "notes.jpg").write_text("not a picture")
        status, out, err = run("import_images", str(folder), "--recursive", "--jobs", "3")
        assert status == 1
        assert out.strip() == "5 files: 3 stored, 1 duplicates, 1 refused."
        assert "notes.jpg: The file is not an image" in err and "duplicate: " in err
        # Either copy of the same bytes may be stored first; the other is the duplicate.
        names = sorted(Image.objects.values_list("original_name", flat=True))
        assert names in (["a.jpg", "b.png", "c.jpg"], ["b.png", "c.jpg", "copy-of-a.jpg"])
        assert set(Image.objects.values_list("state", flat=True)) == {Image.State.QUEUED}

    def test_a_file_identical_to_an_image_the_owner_may_not_see_is_stored_as_theirs(self, db, folder, user,
                                                                                       other_user):
        theirs = store(images.png(2), "bobs-private.png", owner=other_user)
        Image.objects.filter(pk=theirs.pk).update(state=Image.State.INDEXED, hidden=True)
        status, out, err = run("import_images", str(folder), "--owner", "alice")
        assert status == 0
        assert out.strip() == "3 files: 2 stored, 1 duplicates, 0 refused."
        assert Image.objects.get(owner=user, original_name="b.png").sha256 == theirs.sha256
        assert "bobs-private" not in err

    def test_fewer_than_one_job_is_an_error(self, db, folder):
        with pytest.raises(CommandError, match="--jobs must be at least 1, not 0"):
            call_command("import_images", str(folder), "--jobs", "0")
        assert not Image.objects.exists()

    def test_a_missing_path_is_refused(self, db, tmp_path):
        status, _, err = run("import_images", str(tmp_path / "nowhere.jpg"))
        assert status == 1
        assert "nowhere.jpg: The file cannot be read: No such file or directory." in err

    def test_an_empty_folder_is_an_error(self, db, tmp_path):
        with pytest.raises(CommandError, match="No files"):
            call_command("import_images", str(tmp_path))

    def test_it_gives_the_images_to_the_named_owner(self, db, folder, user):
        run("import_images", str(folder), "--owner", user.username)
        assert set(Image.objects.values_list("owner", flat=True)) == {user.pk}

    def test_an_unknown_owner_is_an_error(self, db, folder):
        with pytest.raises(CommandError, match="No user named 'nobody'"):
            call_command("import_images", str(folder), "--owner", "nobody")

    def test_a_second_run_skips_what_the_first_stored(self, db, folder, media_storage):
        run("import_images", str(folder), "--recursive")
        status, out, err = run("import_images", str(folder), "--recursive")
        assert status == 0, err
        assert out.strip() == "4 files: 0 stored, 1 duplicates, 0 refused, 3 skipped as stored by an earlier import."
        assert Image.objects.count() == 3

    def test_a_file_known_by_name_size_and_time_is_skipped_without_being_read(self, db, folder):
        run("import_images", str(folder))
        path = folder / "b.png"
        stat = path.stat()
        with path.open("r+b") as file:  # the same size and time, other contents: not read, so not seen
            file.seek(stat.st_size - 1)
            file.write(b"\x00")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert run("import_images", str(path))[1].strip().endswith("1 skipped as stored by an earlier import.")

    def test_a_file_whose_time_alone_changed_is_skipped_after_hashing_it(self, db, folder):
        run("import_images", str(folder))
        os.utime(folder / "a.jpg", ns=(0, 10**18))
        (folder / "new.jpg").write_bytes(images.jpeg(9))
        (folder / "same-name-and-size").mkdir()
        edited = folder / "same-name-and-size" / "b.png"
        data = bytearray(images.png(2))
        data[-20] ^= 0xFF  # inside the PNG's last chunk: another file of the same size
        edited.write_bytes(bytes(data))
        _, out, _ = run("import_images", str(folder / "a.jpg"), str(folder / "new.jpg"), str(edited))
        assert out.strip() == "3 files: 2 stored, 0 duplicates, 0 refused, 1 skipped as stored by an earlier import."

    def test_the_walk_holds_no_list_of_the_files(self, db, folder, monkeypatch):
        """Stored batch by batch as the walk goes: the first batch is stored before the walk ends."""
        monkeypatch.setattr(import_images, "_FILES_PER_BATCH", 1)
        seen_when_stored: list[int] = []
        walked = 0
        real_walk, real_store = import_images._walk, import_images._store_batch

        def counting_walk(folder, recursive):
            nonlocal walked
            for path in real_walk(folder, recursive):
                walked += 1
                yield path

        def noting_store(job):
            seen_when_stored.append(walked)
            return real_store(job)

        monkeypatch.setattr(import_images, "_walk", counting_walk)
        monkeypatch.setattr(import_images, "_store_batch", noting_store)
        run("import_images", str(folder), "--recursive")
        assert len(seen_when_stored) == 4
        assert seen_when_stored == sorted(seen_when_stored) and seen_when_stored[0] < walked

    def test_waiting_without_a_worker_gives_up_after_the_timeout(self, transactional_db, folder):
        with pytest.raises(CommandError, match="Gave up after 1 s: 0 of 2 images finished"):
            call_command("import_images", str(folder), "--wait", "--timeout", "1", stdout=io.StringIO(),
                         stderr=io.StringIO())
        assert Image.objects.filter(state=Image.State.QUEUED).count() == 2


class TestBootstrapAdmin:
    def test_it_creates_one_administrator_and_says_how_to_sign_in(self, db, settings, tmp_path):
        settings.VAR_DIR = tmp_path
        _, out, _ = run("bootstrap_admin")
        password = (tmp_path / "admin-password.txt").read_text().strip()
        assert f"as admin with password {password}" in out
        assert get_user_model().objects.get(username="admin").check_password(password)
        _, again, _ = run("bootstrap_admin")
        assert "with your administrator account" in again
        assert get_user_model().objects.filter(is_superuser=True).count() == 1
