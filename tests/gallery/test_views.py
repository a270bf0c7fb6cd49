import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connections
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from tests import images
from tests.conftest import (
    change_media_store,
    make_copies,
    media_files,
    store,
    unreachable_address,
    upload_file,
)


def indexed(data: bytes, name: str = "p.jpg", owner=None) -> Image:
    image = make_copies(store(data, name, owner))
    Image.objects.filter(pk=image.pk).update(state=Image.State.INDEXED)
    image.refresh_from_db()
    return image


class TestGallery:
    def test_it_shows_indexed_images_to_anyone(self, client, db):
        shown = indexed(images.jpeg(1), "shown.jpg")
        store(images.jpeg(2), "still-queued.jpg")
        response = client.get(reverse("gallery:index"))
        assert response.status_code == 200
        assert shown.thumbnail.url in response.content.decode()
        assert "still-queued.jpg" not in response.content.decode()

    def test_hidden_images_are_shown_to_their_owner_only(self, client, user, other_user):
        mine = indexed(images.jpeg(1), "hidden-mine.jpg")
        Image.objects.filter(pk=mine.pk).update(hidden=True, owner=user)
        assert "hidden-mine.jpg" not in client.get(reverse("gallery:index")).content.decode()
        client.force_login(other_user)
        assert "hidden-mine.jpg" not in client.get(reverse("gallery:index")).content.decode()
        client.force_login(user)
        assert "hidden-mine.jpg" in client.get(reverse("gallery:index")).content.decode()

    def test_an_owner_also_sees_their_images_in_progress(self, alice_client, user):
        store(images.jpeg(2), "mine-queued.jpg", owner=user)
        assert "mine-queued.jpg" in alice_client.get(reverse("gallery:index")).content.decode()

    def test_it_pages_the_gallery(self, client, db):
        for i in range(50):
            indexed(images.jpeg(i, size=(32, 32)), f"img-{i:02d}.jpg")
        first = client.get(reverse("gallery:index")).content.decode()
        second = client.get(reverse("gallery:index") + "?page=2").content.decode()
        assert "img-49.jpg" in first and "img-00.jpg" not in first
        assert "img-00.jpg" in second
        assert "Page 2 of 2" in second

    def test_an_empty_gallery_says_so(self, client, db):
        assert "The gallery is empty" in client.get(reverse("gallery:index")).content.decode()

    def test_a_private_gallery_asks_anonymous_visitors_to_sign_in(self, client, db, settings):
        settings.LOOKALIKE_PUBLIC_GALLERY = False
        image = indexed(images.jpeg(1))
        for url in (reverse("gallery:index"), reverse("gallery:detail", args=[image.pk]), image.thumbnail.url,
                    reverse("search:search")):
            response = client.get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("login"))

    def test_the_name_is_escaped_wherever_it_is_shown(self, client, db):
        image = indexed(images.jpeg(1), "<img src=x onerror=alert(1)>.jpg")
        for url in (reverse("gallery:index"), reverse("gallery:detail", args=[image.pk])):
            body = client.get(url).content.decode()
            assert "<img src=x" not in body
            assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in body


class TestDetail:
    def test_it_shows_the_image_and_find_similar(self, client, db):
        image = indexed(images.jpeg(1), "cat.jpg")
        body = client.get(reverse("gallery:detail", args=[image.pk])).content.decode()
        assert image.display.url in body
        assert reverse("search:similar", args=[image.pk]) in body
        assert "320 × 240" in body

    def test_an_unknown_image_is_not_found(self, client, db):
        assert client.get(reverse("gallery:detail", args=[999])).status_code == 404

    def test_a_failed_image_shows_its_reason_to_its_owner(self, alice_client, user):
        image = store(images.jpeg(1), owner=user)
        Image.objects.filter(pk=image.pk).update(state=Image.State.FAILED, error="The stored copy is gone")
        body = alice_client.get(reverse("gallery:detail", args=[image.pk])).content.decode()
        assert "The stored copy is gone" in body


class TestUpload:
    def test_it_asks_anonymous_visitors_to_sign_in(self, client, db):
        response = client.get(reverse("gallery:upload"))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
        assert client.post(reverse("gallery:upload")).status_code == 302
        assert not Image.objects.exists()

    def test_it_offers_a_drop_zone_and_a_file_picker(self, alice_client):
        body = alice_client.get(reverse("gallery:upload")).content.decode()
        assert "data-dropzone" in body and 'type="file"' in body and "multiple" in body

    def test_it_reports_each_file_as_json(self, alice_client, user):
        files = [upload_file("a.jpg", images.jpeg(1)), upload_file("b.png", images.png(2), "image/png"),
                 upload_file("a-again.jpg", images.jpeg(1)), upload_file("notes.jpg", b"just text")]
        response = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json")
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["status"] for r in results] == ["accepted", "accepted", "duplicate", "refused"]
        assert results[0]["image"]["state"] == "queued"
        assert results[2]["image"]["id"] == results[0]["image"]["id"]
        assert "not an image" in results[3]["message"]
        assert Image.objects.filter(owner=user).count() == 2

    def test_a_file_identical_to_another_users_hidden_image_is_stored_as_yours(self, alice_client, user,
                                                                                 other_user):
        theirs = indexed(images.jpeg(5), "bobs-private.jpg", owner=other_user)
        Image.objects.filter(pk=theirs.pk).update(hidden=True)
        files = [upload_file("mine.jpg", images.jpeg(5))]
        response = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json")
        [result] = response.json()["results"]
        assert result["status"] == "accepted"
        mine = Image.objects.get(pk=result["image"]["id"])
        assert mine.owner == user and mine != theirs
        page = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("mine.jpg", images.jpeg(5))]})
        for body in (response.content.decode(), page.content.decode()):
            assert "bobs-private" not in body and theirs.thumbnail.url not in body
            assert theirs.display.url not in body and f"/images/{theirs.pk}/" not in body

    def test_it_reports_each_file_on_the_page_without_javascript(self, alice_client):
        files = [upload_file("good.jpg", images.jpeg(1)), upload_file("bad.jpg", b"")]
        body = alice_client.post(reverse("gallery:upload"), {"files": files}).content.decode()
        assert "good.jpg" in body and "Queued" in body
        assert "bad.jpg" in body and "The file is empty." in body

    def test_it_refuses_more_files_than_the_limit(self, alice_client, settings):
        settings.LOOKALIKE_MAX_UPLOAD_FILES = 2
        files = [upload_file(f"{i}.jpg", images.jpeg(i)) for i in range(3)]
        response = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json")
        assert response.status_code == 400
        assert response.json() == {"code": "too_many_files", "message": "Send at most 2 files at a time."}
        assert not Image.objects.exists()

    def test_it_takes_as_many_files_as_the_setting_allows(self, alice_client, settings):
        count = settings.LOOKALIKE_MAX_UPLOAD_FILES
        files = [upload_file(f"{i}.png", images.encode(PILImage.new("RGB", (2, 2), (i % 256, i // 256, 0)), "PNG"),
                             "image/png") for i in range(count)]
        response = alice_client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json")
        assert response.status_code == 200
        assert {r["status"] for r in response.json()["results"]} == {"accepted"}
        assert Image.objects.count() == count

    def test_it_asks_for_a_file_when_none_is_sent(self, alice_client):
        response = alice_client.post(reverse("gallery:upload"), {})
        assert response.status_code == 400
        assert "Choose one or more images" in response.content.decode()


class TestConcurrentUploads:
    @pytest.mark.django_db(transaction=True)
    def test_uploads_at_once_never_store_more_than_the_quota(self, user, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 5
        clients = [Client() for _ in range(4)]
        for client in clients:
            client.force_login(user)
        start = threading.Barrier(len(clients))
        before = media_files()

        def upload_five(client: Client, first: int) -> list[dict]:
            files = [upload_file(f"{n}.jpg", images.jpeg(n, size=(96, 96))) for n in range(first, first + 5)]
            try:
                start.wait()
                response = client.post(reverse("gallery:upload"), {"files": files}, HTTP_ACCEPT="application/json")
                return response.json()["results"]
            finally:
                connections.close_all()  # this thread's own connection

        with ThreadPoolExecutor(len(clients)) as pool:
            answers = [r for results in pool.map(upload_five, clients, range(0, 20, 5)) for r in results]
        assert Counter((r["status"], r["code"]) for r in answers) == {
            ("accepted", ""): 5, ("refused", "quota_exceeded"): 15}
        assert Image.objects.filter(owner=user).count() == 5
        # Originals only: a worker left running by an earlier test may already make the copies.
        originals = {path for path in media_files() - before if path.startswith("originals/")}
        assert len(originals) == 5, "the originals of refused uploads are deleted"


class TestStates:
    def test_it_reports_the_state_of_each_image(self, alice_client, user):
        queued = store(images.jpeg(1), owner=user)
        done = indexed(images.jpeg(2))
        response = alice_client.get(reverse("gallery:states"), {"ids": f"{queued.pk},{done.pk},999"})
        states = {row["id"]: row["state"] for row in response.json()["images"]}
        assert states == {queued.pk: "queued", done.pk: "indexed"}

    def test_it_refuses_ids_that_are_not_numbers(self, client, db):
        response = client.get(reverse("gallery:states"), {"ids": "1,two"})
        assert response.status_code == 400
        assert response.json()["code"] == "bad_ids"


class TestDelete:
    def test_the_owner_may_delete(self, alice_client, user):
        image = indexed(images.jpeg(1), owner=user)
        response = alice_client.post(reverse("gallery:delete", args=[image.pk]))
        assert response.status_code == 302
        assert not Image.objects.exists()

    def test_another_user_may_not(self, client, user, other_user):
        image = indexed(images.jpeg(1), owner=user)
        client.force_login(other_user)
        assert client.post(reverse("gallery:delete", args=[image.pk])).status_code == 403
        assert Image.objects.filter(pk=image.pk).exists()

    def test_staff_may(self, client, user, staff_user):
        image = indexed(images.jpeg(1), owner=user)
        client.force_login(staff_user)
        assert client.post(reverse("gallery:delete", args=[image.pk])).status_code == 302
        assert not Image.objects.exists()

    def test_it_needs_a_post(self, alice_client, user):
        image = indexed(images.jpeg(1), owner=user)
        assert alice_client.get(reverse("gallery:delete", args=[image.pk])).status_code == 405
        assert Image.objects.exists()


class TestFiles:
    def test_the_owner_downloads_the_original_as_an_attachment(self, alice_client, user, media_storage):
        image = indexed(images.png(1), "mine.png", owner=user)
        response = alice_client.get(reverse("gallery:original", args=[image.pk]))
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == images.png(1)
        assert response["Content-Disposition"].startswith("attachment")
        assert response["X-Content-Type-Options"] == "nosniff"

    @pytest.mark.parametrize(("uploaded_as", "data", "downloaded_as", "content_type"), [
        ("x.html", images.jpeg(1), "x.jpg", "image/jpeg"),
        ("holiday.JPEG", images.jpeg(2), "holiday.jpg", "image/jpeg"),
        ("drawing.svg", images.png(3), "drawing.png", "image/png"),
        ("no-extension", images.png(4), "no-extension.png", "image/png"),
        ("archive.tar.gz", images.jpeg(5), "archive.tar.jpg", "image/jpeg"),
    ], ids=["html", "upper-case", "svg", "none", "double"])
    def test_the_original_downloads_with_the_extension_of_its_stored_format(
            self, alice_client, user, uploaded_as, data, downloaded_as, content_type):
        image = indexed(data, uploaded_as, owner=user)
        response = alice_client.get(reverse("gallery:original", args=[image.pk]))
        assert response["Content-Disposition"] == f'attachment; filename="{downloaded_as}"'
        assert response["Content-Type"] == content_type
        assert b"".join(response.streaming_content) == data

    def test_nobody_else_gets_the_original(self, client, user, other_user):
        image = indexed(images.png(1), owner=user)
        client.force_login(other_user)
        assert client.get(reverse("gallery:original", args=[image.pk])).status_code == 404

    def test_copies_are_served_without_content_sniffing(self, client, db, media_storage):
        image = indexed(images.jpeg(1))
        for copy in (image.thumbnail, image.display):
            response = client.get(copy.url)
            assert response.status_code == 200
            assert response["Content-Type"] == "image/jpeg"
            assert response["X-Content-Type-Options"] == "nosniff"
            with default_storage.open(copy.name, "rb") as stored:
                assert b"".join(response.streaming_content) == stored.read()

    def test_a_copy_everyone_may_see_stays_in_shared_caches_for_minutes_only(self, client, db):
        image = indexed(images.jpeg(1))
        for url in (image.thumbnail.url, image.display.url):
            response = client.get(url)
            assert response.status_code == 200
            # Hiding the image takes it out of shared caches within five minutes.
            assert response["Cache-Control"] == "public, max-age=86400, s-maxage=300"

    def test_a_copy_of_a_hidden_image_is_never_kept_by_a_shared_cache(self, alice_client, user):
        image = indexed(images.jpeg(1), owner=user)
        Image.objects.filter(pk=image.pk).update(hidden=True)
        for url in (image.thumbnail.url, image.display.url):
            response = alice_client.get(url)
            assert response.status_code == 200
            assert response["Cache-Control"] == "private, max-age=3600"

    def test_nothing_of_a_private_gallery_is_kept_by_a_shared_cache(self, alice_client, settings):
        settings.LOOKALIKE_PUBLIC_GALLERY = False
        image = indexed(images.jpeg(1))
        response = alice_client.get(image.thumbnail.url)
        assert response.status_code == 200
        assert response["Cache-Control"] == "private, max-age=3600"

    def test_a_file_that_belongs_to_no_image_is_not_served(self, client, db, settings, media_storage):
        image = indexed(images.jpeg(1))
        stray = default_storage.save(image.thumbnail.name.replace(".jpg", "-stray.jpg"),
                                     ContentFile(image.thumbnail.read()))
        assert client.get(settings.MEDIA_URL + stray).status_code == 404

    @pytest.mark.parametrize("path", ["originals/{name}", "display/../originals/{name}", "", "secret_key"])
    def test_originals_and_other_files_are_never_served(self, client, db, path, media_storage):
        image = indexed(images.jpeg(1))
        name = image.original.name.split("/", 1)[1]
        assert client.get("/media/" + path.format(name=name)).status_code == 404


class TestFilesWhenTheStoreFails:
    """Media in a bucket on the gateway, and the gateway unreachable or refusing the site's key."""

    def test_a_copy_the_store_will_not_give_is_answered_503_with_a_reason(self, alice_client, user, s3_media,
                                                                          settings):
        image = indexed(images.jpeg(1), owner=user)
        change_media_store(settings, LOOKALIKE_S3_SECRET_ACCESS_KEY="not-the-key")
        for url in (image.thumbnail.url, reverse("gallery:original", args=[image.pk])):
            response = alice_client.get(url)
            assert response.status_code == 503, url
            assert response["Retry-After"] == "30"
            assert b"cannot be read from the media storage" in response.content

    def test_a_copy_gone_from_the_store_is_not_found(self, client, db, s3_media):
        image = indexed(images.jpeg(2))
        default_storage.delete(image.thumbnail.name)
        assert client.get(image.thumbnail.url).status_code == 404

    def test_an_upload_while_the_store_is_unreachable_is_answered_503_file_by_file(self, alice_client, s3_media,
                                                                                   settings):
        change_media_store(settings, LOOKALIKE_S3_ENDPOINT_URL=unreachable_address())
        response = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("a.jpg", images.jpeg(3))]},
                                     HTTP_ACCEPT="application/json")
        assert response.status_code == 503
        [result] = response.json()["results"]
        assert (result["status"], result["code"], result["image"]) == ("refused", "store_unavailable", None)
        assert "nothing from this upload was stored" in result["message"]
        assert not Image.objects.exists()
        page = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("a.jpg", images.jpeg(3))]})
        assert page.status_code == 503
        assert "nothing from this upload was stored" in page.content.decode()
