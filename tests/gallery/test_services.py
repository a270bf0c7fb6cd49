import io
import re
import tracemalloc
from pathlib import PurePosixPath

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from gallery import services
from gallery.models import Image
from gallery.services import STORE_UNAVAILABLE_MESSAGE, clean_original_name, image_delete, image_upload, images_upload
from search.models import Embedding, IndexChange
from tests import images
from tests.conftest import (
    change_media_store,
    media_files,
    refuse_writes,
    store,
    store_indexed,
    unreachable_address,
)


def upload(data: bytes, name: str = "photo.jpg", owner=None):
    return image_upload(source=io.BytesIO(data), original_name=name, owner=owner)


class TestUpload:
    def test_it_stores_the_original_alone_and_the_worker_makes_the_copies(self, db, user, media_storage):
        result = upload(images.png(1), "holiday.png", owner=user)
        image = result.image
        assert result.status == "accepted"
        assert (image.original_name, image.format, image.width, image.height) == ("holiday.png", "PNG", 320, 240)
        assert image.owner == user
        assert image.state == Image.State.QUEUED
        assert image.original.name.startswith("originals/") and image.original.name.endswith(".png")
        assert not image.display and not image.thumbnail
        assert image.original.read() == images.png(1)
        assert image.byte_size == len(images.png(1))
        image = store_indexed(images.png(2), "second.png", owner=user)
        stem = image.original.name.removeprefix("originals/").removesuffix(".png")
        assert (image.thumbnail.name, image.display.name) == (f"thumbs/{stem}.jpg", f"display/{stem}.jpg")

    def test_an_identical_file_is_stored_once_and_named_as_a_duplicate(self, db, media_storage):
        first = store(images.jpeg(2), "first.jpg")
        before = media_files()
        result = upload(images.jpeg(2), "again.jpg")
        assert result.status == "duplicate"
        assert result.image == first
        assert f"#{first.pk}" in result.message and "first.jpg" in result.message
        assert Image.objects.count() == 1
        assert media_files() == before

    @pytest.mark.parametrize(("data", "code"), [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 5, "damaged"),
        (b"%PDF-1.4 not an image", "unsupported_format"),
        (b"hello, world", "not_an_image"),
    ])
    def test_a_refused_file_leaves_nothing_behind(self, db, data, code, media_storage):
        before = media_files()
        result = upload(data, "bad.jpg")
        assert result.status == "refused"
        assert result.code == code
        assert result.message
        assert Image.objects.count() == 0
        assert media_files() == before

    def test_a_file_over_the_size_limit_is_refused(self, db, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1000
        result = upload(images.jpeg(3), "big.jpg")
        assert (result.status, result.code) == ("refused", "too_large")
        assert result.message == "The file is larger than the limit of 1000\xa0bytes."
        assert Image.objects.count() == 0

    def test_the_originals_of_one_batch_share_a_folder(self, db):
        results = images_upload(uploads=[("a.jpg", io.BytesIO(images.jpeg(4))), ("b.png", io.BytesIO(images.png(5)))],
                                owner=None)
        folders = {PurePosixPath(result.image.original.name).parent for result in results}
        [folder] = folders
        assert re.fullmatch(r"originals/[0-9a-f]{2}/[0-9a-f]{2}", str(folder))
        assert [result.image.original.read() for result in results] == [images.jpeg(4), images.png(5)]

    def test_a_storage_failure_refuses_the_upload_and_removes_the_files_already_written(self, db, monkeypatch,
                                                                                         media_storage):
        before = media_files()
        real_write = services._write_original
        calls = []

        def write_then_fail(spooled, name: str) -> str:
            calls.append(PurePosixPath(name).suffix)
            if len(calls) == 2:
                raise OSError("No space left on device")
            return real_write(spooled, name)

        monkeypatch.setattr(services, "_write_original", write_then_fail)
        results = images_upload(uploads=[("a.jpg", io.BytesIO(images.jpeg(4))), ("b.png", io.BytesIO(images.png(5))),
                                         ("c.jpg", io.BytesIO(images.jpeg(6))), ("bad.jpg", io.BytesIO(b"hello"))],
                                owner=None)
        assert calls == [".jpg", ".png"]
        assert [(r.original_name, r.status, r.code) for r in results] == [
            ("a.jpg", "refused", "store_unavailable"), ("b.png", "refused", "store_unavailable"),
            ("c.jpg", "refused", "store_unavailable"), ("bad.jpg", "refused", "not_an_image")]
        assert results[0].message == STORE_UNAVAILABLE_MESSAGE
        assert Image.objects.count() == 0
        assert media_files() == before

    def test_a_large_file_is_stored_in_chunks_without_being_held_whole(self, db):
        noise = np.random.default_rng(2).integers(0, 256, (2900, 2900, 3), dtype=np.uint8)
        data = images.encode(PILImage.fromarray(noise), "PNG", compress_level=1)
        assert len(data) > 24 * 1024 * 1024
        tracemalloc.start()
        try:
            result = upload(data, "noise.png")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.status == "accepted", result.message
        # In memory up to FILE_UPLOAD_MAX_MEMORY_SIZE (4 MiB), in a temporary file beyond, copied a MiB at a time.
        assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB"
        assert result.image.original.read() == data

    @pytest.mark.parametrize(("given", "shown"), [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("C:\\Users\\me\\cat.jpg", "cat.jpg"),
        ("evil\x00name.jpg", "evilname.jpg"),
        ("a.php.jpg", "a.php.jpg"),
        ("", "unnamed"),
        ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
    ])
    def test_the_uploaded_name_is_kept_only_as_data(self, db, given, shown):
        assert clean_original_name(given) == shown
        image = upload(images.jpeg(5), given).image
        assert image.original_name == shown
        assert shown not in image.original.name


class _FailsWhenRead(io.BytesIO):
    def read(self, size: int | None = -1, /) -> bytes:
        raise MemoryError


class TestBatchUpload:
    def upload_all(self, files, owner=None):
        return images_upload(uploads=[(name, io.BytesIO(data)) for name, data in files], owner=owner)

    def test_it_answers_each_file_in_order_and_stores_a_repeated_file_once(self, db, media_storage):
        before = media_files()
        results = self.upload_all([("a.jpg", images.jpeg(1)), ("bad.jpg", b"hello"), ("b.png", images.png(2)),
                                   ("a-again.jpg", images.jpeg(1))])
        assert [(r.original_name, r.status) for r in results] == [
            ("a.jpg", "accepted"), ("bad.jpg", "refused"), ("b.png", "accepted"), ("a-again.jpg", "duplicate")]
        assert results[3].image == results[0].image
        assert f"#{results[0].image.pk}" in results[3].message
        assert Image.objects.count() == 2
        assert len(media_files() - before) == 2, "their originals: the copies are the worker's to make"

    def test_a_repeat_of_a_refused_file_is_refused_alike(self, db):
        results = self.upload_all([("one.gif", b"GIF89a" + b"\x00" * 5), ("two.gif", b"GIF89a" + b"\x00" * 5)])
        assert [(r.original_name, r.status, r.code) for r in results] == [
            ("one.gif", "refused", "damaged"), ("two.gif", "refused", "damaged")]
        assert results[0].message == results[1].message

    def test_the_workers_are_asked_once_per_batch(self, db, settings, embedding_messages,
                                                  django_capture_on_commit_callbacks):
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 4
        with django_capture_on_commit_callbacks(execute=True):
            results = self.upload_all([(f"{i}.jpg", images.jpeg(i)) for i in range(9)])
        assert all(r.status == "accepted" for r in results)
        ids = sorted(r.image.pk for r in results)
        assert embedding_messages == [("search.send_embedding_batches", (ids[::4],))]

    def test_a_failure_midway_leaves_nothing_of_the_batch(self, db, media_storage):
        before = media_files()
        with pytest.raises(MemoryError):
            images_upload(uploads=[("a.jpg", io.BytesIO(images.jpeg(1))),
                                   ("b.jpg", _FailsWhenRead(images.jpeg(2)))], owner=None)
        assert not Image.objects.exists()
        assert media_files() == before

    def test_a_file_another_upload_stored_meanwhile_becomes_its_duplicate(self, db, monkeypatch):
        """Stored by another upload between this one's duplicate look-up and its insert."""
        before = media_files()
        real_write = services._write_original

        def write_while_another_stores(spooled, name: str) -> str:
            monkeypatch.setattr(services, "_write_original", real_write)
            spooled.seek(0)
            if spooled.read() == images.jpeg(1):
                store(images.jpeg(1), "theirs.jpg")
            return real_write(spooled, name)

        monkeypatch.setattr(services, "_write_original", write_while_another_stores)
        results = images_upload(uploads=[("mine.jpg", io.BytesIO(images.jpeg(1))),
                                         ("other.jpg", io.BytesIO(images.jpeg(2)))], owner=None)
        theirs = Image.objects.get(original_name="theirs.jpg")
        assert [(r.status, r.image) for r in results] == [("duplicate", theirs), ("accepted", results[1].image)]
        assert Image.objects.count() == 2
        assert len(media_files() - before) == 2, "the originals of theirs and other.jpg; mine.jpg's is removed"

    def test_the_quota_counts_the_files_of_the_same_batch(self, db, user, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 2
        results = self.upload_all([(f"{i}.jpg", images.jpeg(i)) for i in range(3)], owner=user)
        assert [(r.status, r.code) for r in results] == [("accepted", ""), ("accepted", ""),
                                                         ("refused", "quota_exceeded")]
        assert Image.objects.filter(owner=user).count() == 2


class TestDuplicatesOfImagesTheUploaderMayNotSee:
    """An identical file is named as a duplicate only when the uploader may see the image it
    matches. Otherwise it is stored as the uploader's own, as any new file would be, so that the
    answer tells them nothing about an image they may not see."""

    @pytest.fixture
    def bobs(self, other_user):
        image = store(images.jpeg(7), "bobs-private.jpg", owner=other_user)
        Image.objects.filter(pk=image.pk).update(state=Image.State.INDEXED)
        return image

    @pytest.mark.parametrize("hidden_by", [{"hidden": True}, {"hidden": True, "awaiting_approval": True},
                                           {"state": Image.State.QUEUED}])
    def test_it_is_stored_as_the_uploaders_own_like_a_new_file(self, user, bobs, hidden_by):
        Image.objects.filter(pk=bobs.pk).update(**hidden_by)
        result = upload(images.jpeg(7), "mine.jpg", owner=user)
        fresh = upload(images.jpeg(8), "new.jpg", owner=user)
        assert (result.status, result.code, result.message) == (fresh.status, fresh.code, fresh.message)
        assert result.image != bobs and result.image.owner == user and result.image.original_name == "mine.jpg"
        assert result.image.sha256 == bobs.sha256
        assert upload(images.jpeg(7), "mine-again.jpg", owner=user).image == result.image, "their own is named"

    def test_an_image_the_uploader_may_see_is_named_as_today(self, user, bobs):
        result = upload(images.jpeg(7), "mine.jpg", owner=user)
        assert (result.status, result.image) == ("duplicate", bobs)
        assert Image.objects.count() == 1

    def test_staff_see_every_image_so_theirs_is_named(self, staff_user, bobs):
        Image.objects.filter(pk=bobs.pk).update(hidden=True)
        assert upload(images.jpeg(7), owner=staff_user).image == bobs

    def test_an_import_with_no_owner_is_the_operators_who_sees_every_image(self, db, bobs):
        Image.objects.filter(pk=bobs.pk).update(hidden=True)
        assert upload(images.jpeg(7)).image == bobs
        assert Image.objects.count() == 1


class TestDelete:
    def test_it_removes_the_row_vectors_and_files_and_logs_the_removal(
            self, db, django_capture_on_commit_callbacks, media_storage):
        image = store_indexed(images.jpeg(6))
        names = [image.original.name, image.display.name, image.thumbnail.name]
        assert all(default_storage.exists(name) for name in names)
        image_id = image.pk
        with django_capture_on_commit_callbacks(execute=True):
            image_delete(image=image)
        assert not Image.objects.exists()
        assert not Embedding.objects.exists()
        assert IndexChange.objects.order_by("-seq").values_list("kind", "image_id").first() == ("remove", image_id)
        assert not any(default_storage.exists(name) for name in names)


class TestQuota:
    def test_a_user_past_the_image_quota_is_refused_with_the_reason(self, db, user, other_user, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 2
        store(images.jpeg(1), owner=user)
        store(images.jpeg(2), owner=user)
        result = upload(images.jpeg(3), "third.jpg", owner=user)
        assert (result.status, result.code) == ("refused", "quota_exceeded")
        assert result.message == "You have reached your quota of 2 images; delete some to upload more."
        assert upload(images.jpeg(3), "theirs.jpg", owner=other_user).status == "accepted"
        assert Image.objects.filter(owner=user).count() == 2

    def test_a_file_that_would_pass_the_byte_quota_is_refused(self, db, user, settings):
        first, second = images.jpeg(1), images.jpeg(2)
        settings.LOOKALIKE_UPLOAD_QUOTA_BYTES = len(first) + len(second) - 1
        store(first, owner=user)
        result = upload(second, owner=user)
        assert (result.status, result.code) == ("refused", "quota_exceeded")
        assert "would take you past your quota" in result.message
        settings.LOOKALIKE_UPLOAD_QUOTA_BYTES = len(first) + len(second)
        assert upload(second, owner=user).status == "accepted"

    def test_a_duplicate_costs_nothing_and_zero_means_no_limit(self, db, user, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 1
        store(images.jpeg(1), owner=user)
        assert upload(images.jpeg(1), owner=user).status == "duplicate"
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 0
        assert upload(images.jpeg(2), owner=user).status == "accepted"

    def test_an_upload_with_no_owner_has_no_quota(self, db, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 1
        store(images.jpeg(1))
        assert upload(images.jpeg(2)).status == "accepted"


class TestObjectStoreFailures:
    """Media in a bucket on the gateway, and the gateway unreachable or refusing what is asked of it."""

    def test_an_upload_while_the_store_is_unreachable_is_refused_and_leaves_no_row(self, db, s3_media, settings):
        endpoint = settings.LOOKALIKE_S3_ENDPOINT_URL
        change_media_store(settings, LOOKALIKE_S3_ENDPOINT_URL=unreachable_address())
        results = images_upload(uploads=[("a.jpg", io.BytesIO(images.jpeg(1))), ("b.png", io.BytesIO(images.png(2))),
                                         ("a-again.jpg", io.BytesIO(images.jpeg(1)))], owner=None)
        assert [(r.original_name, r.status, r.code, r.message) for r in results] == [
            (name, "refused", "store_unavailable", STORE_UNAVAILABLE_MESSAGE) for name in ("a.jpg", "b.png",
                                                                                          "a-again.jpg")]
        assert not Image.objects.exists()
        change_media_store(settings, LOOKALIKE_S3_ENDPOINT_URL=endpoint)
        assert media_files() == set()

    def test_an_upload_the_store_refuses_midway_is_refused_after_removing_what_it_wrote(self, db, s3_media,
                                                                                      monkeypatch):
        real_write = services._write_original
        written = []

        def refused_after_the_first(spooled, name: str) -> str:
            if written:
                refuse_writes(s3_media)
            written.append(real_write(spooled, name))
            return written[-1]

        monkeypatch.setattr(services, "_write_original", refused_after_the_first)
        results = images_upload(uploads=[("a.jpg", io.BytesIO(images.jpeg(3))), ("b.jpg", io.BytesIO(images.jpeg(4)))],
                                owner=None)
        assert [(r.status, r.code) for r in results] == [("refused", "store_unavailable")] * 2
        assert len(written) == 1 and not Image.objects.exists()
        assert media_files() == set(), "the first original, written before the refusal, is removed"

    def test_a_delete_the_store_refuses_removes_the_image_and_leaves_its_files_unserved(
            self, db, s3_media, settings, client, caplog, django_capture_on_commit_callbacks):
        image = store_indexed(images.jpeg(5))
        Image.objects.filter(pk=image.pk).update(state=Image.State.INDEXED)
        names = {image.original.name, image.thumbnail.name, image.display.name}
        secret = settings.LOOKALIKE_S3_SECRET_ACCESS_KEY
        change_media_store(settings, LOOKALIKE_S3_SECRET_ACCESS_KEY="not-the-key")
        with django_capture_on_commit_callbacks(execute=True):
            image_delete(image=image)
        assert not Image.objects.exists()
        assert IndexChange.objects.order_by("-seq").values_list("kind", flat=True).first() == "remove"
        assert sum("Could not delete" in record.getMessage() for record in caplog.records) == 3
        change_media_store(settings, LOOKALIKE_S3_SECRET_ACCESS_KEY=secret)
        assert media_files() == names, "left in the bucket, where nothing names them"
        assert client.get(f"/media/{image.thumbnail.name}").status_code == 404
