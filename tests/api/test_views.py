import io
import json

import pytest
from django.test import Client, TestCase
from django.urls import reverse
from PIL import Image as PILImage

from api.services import api_token_create, api_token_revoke
from gallery.models import Image, Tag
from search.services import image_embed
from tests import images
from tests.api.conftest import bearer, indexed
from tests.conftest import store, upload_file

IMAGES_URL = "/api/v1/images"


def image_url(image_id: object) -> str:
    return f"/api/v1/images/{image_id}"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == code, body
    assert set(body) == {"code", "message"} and body["message"].strip()
    return body


class TestAuthentication:
    def test_a_token_acts_as_its_user(self, client, user, secret):
        mine = store(images.jpeg(1), owner=user)  # still queued: only its owner sees it
        assert_error(client.get(image_url(mine.pk)), 404, "image_not_found")
        assert client.get(image_url(mine.pk), headers=bearer(secret)).json()["owner"] == "alice"

    @pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer ", "Basic YWxpY2U6cHc=", "lka_abc", "Bearer"])
    def test_a_bad_token_is_refused_even_where_anonymous_may_read(self, client, db, header):
        image = indexed(images.jpeg(1))
        assert client.get(image_url(image.pk)).status_code == 200
        response = client.get(image_url(image.pk), headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["code"] in {"invalid_token", "invalid_authorization"}
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_a_revoked_token_is_refused(self, client, user):
        token, secret = api_token_create(user=user, name="t")
        api_token_revoke(token_id=token.pk, user=user)
        assert_error(client.get(image_url(1), headers=bearer(secret)), 401, "invalid_token")

    def test_a_private_gallery_needs_authentication(self, client, user, secret, settings):
        settings.LOOKALIKE_PUBLIC_GALLERY = False
        image = indexed(images.jpeg(1))
        assert_error(client.get(image_url(image.pk)), 401, "not_authenticated")
        assert client.get(image_url(image.pk), headers=bearer(secret)).status_code == 200

    def test_the_session_works_with_its_csrf_token(self, user):
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(user)
        image = indexed(images.jpeg(1), owner=user)
        assert browser.get(image_url(image.pk)).status_code == 200
        assert_error(browser.delete(image_url(image.pk)), 403, "csrf_failed")
        browser.get(reverse("api:account"))  # sets the CSRF cookie, as any page does
        csrf = browser.cookies["csrftoken"].value
        assert browser.delete(image_url(image.pk), headers={"X-CSRFToken": csrf}).status_code == 204

    def test_a_token_needs_no_csrf_token(self, user, secret):
        program = Client(enforce_csrf_checks=True)
        response = program.post(IMAGES_URL, {"image": upload_file("a.jpg", images.jpeg(1))}, headers=bearer(secret))
        assert response.status_code == 202


class TestUpload:
    def test_it_stores_many_files_and_says_what_became_of_each(self, client, user, secret):
        existing = indexed(images.jpeg(9), "first.jpg")
        files = [upload_file("a.jpg", images.jpeg(1)), upload_file("b.png", images.png(2), "image/png"),
                 upload_file("copy.jpg", images.jpeg(9)), upload_file("notes.txt", b"hello", "text/plain")]
        response = client.post(IMAGES_URL, {"image": files}, headers=bearer(secret))
        assert response.status_code == 202
        results = response.json()["results"]
        assert [r["status"] for r in results] == ["accepted", "accepted", "duplicate", "refused"]
        assert [r["original_name"] for r in results] == ["a.jpg", "b.png", "copy.jpg", "notes.txt"]
        assert results[2]["id"] == existing.pk and "first.jpg" in results[2]["message"]
        assert results[3]["code"] == "not_an_image" and results[3]["id"] is None
        new = Image.objects.get(pk=results[0]["id"])
        assert new.owner == user and new.original_name == "a.jpg"
        state = client.get(results[0]["status_url"], headers=bearer(secret)).json()
        assert state["state"] == "queued" and state["id"] == new.pk

    def test_a_file_identical_to_an_image_you_cannot_see_is_stored_as_yours(self, client, user, other_user,
                                                                               secret):
        hidden = store(images.jpeg(5), "bobs-private.jpg", owner=other_user)
        response = client.post(IMAGES_URL, {"image": upload_file("mine.jpg", images.jpeg(5))},
                               headers=bearer(secret))
        assert response.status_code == 202
        [result] = response.json()["results"]
        assert (result["status"], result["message"]) == ("accepted", "Stored; it is queued to be indexed.")
        assert Image.objects.get(pk=result["id"]).owner == user and result["id"] != hidden.pk
        assert "bobs-private" not in response.content.decode()

    @pytest.mark.parametrize(("data", "content_type", "status", "code"), [
        (b"", "image/jpeg", 400, "empty"),
        (b"just some text", "text/plain", 415, "not_an_image"),
        (images.encode(images.picture(1), "BMP"), "image/bmp", 415, "unsupported_format"),
        (images.jpeg(1)[:400], "image/jpeg", 400, "damaged"),
    ])
    def test_when_every_file_is_refused_the_status_says_why(self, client, user, secret, data, content_type, status,
                                                             code):
        response = client.post(IMAGES_URL, {"image": upload_file("f", data, content_type)}, headers=bearer(secret))
        assert response.status_code == status
        [result] = response.json()["results"]
        assert result["status"] == "refused" and result["code"] == code and result["message"]
        assert not Image.objects.exists()

    def test_a_file_over_the_size_limit_is_too_large(self, client, user, secret, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1000
        response = client.post(IMAGES_URL, {"image": upload_file("big.jpg", images.jpeg(1, size=(200, 200)))},
                               headers=bearer(secret))
        assert response.status_code == 413
        assert response.json()["results"][0]["code"] == "too_large"

    def test_a_body_declared_too_large_is_refused_before_it_is_read(self, client, user, secret):
        response = client.post(IMAGES_URL, {"image": upload_file("a.jpg", images.jpeg(1))}, headers=bearer(secret),
                               CONTENT_LENGTH=str(10**13))
        assert_error(response, 413, "request_too_large")
        assert not Image.objects.exists()

    def test_too_many_files_store_nothing(self, client, user, secret, settings):
        settings.LOOKALIKE_MAX_UPLOAD_FILES = 2
        files = [upload_file(f"{i}.jpg", images.jpeg(i)) for i in range(3)]
        body = assert_error(client.post(IMAGES_URL, {"image": files}, headers=bearer(secret)), 400, "too_many_files")
        assert "at most 2 files" in body["message"]
        assert not Image.objects.exists()

    def test_more_files_than_django_parses_are_too_many_too(self, client, user, secret, settings):
        settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
        files = [upload_file(f"{i}.jpg", images.jpeg(i)) for i in range(3)]
        assert_error(client.post(IMAGES_URL, {"image": files}, headers=bearer(secret)), 400, "too_many_files")
        assert not Image.objects.exists()

    def test_a_missing_field_is_named(self, client, user, secret):
        response = client.post(IMAGES_URL, {"picture": upload_file("a.jpg", images.jpeg(1))}, headers=bearer(secret))
        assert "image" in assert_error(response, 400, "missing_image")["message"]

    def test_anonymous_uploads_are_refused(self, client, db):
        response = client.post(IMAGES_URL, {"image": upload_file("a.jpg", images.jpeg(1))})
        assert_error(response, 401, "not_authenticated")
        assert not Image.objects.exists()


class TestImage:
    def test_it_describes_an_image(self, client, user):
        image = indexed(images.jpeg(1, size=(320, 240)), "cat.jpg", owner=user)
        image.tags.add(Tag.objects.create(name="cats"))
        body = client.get(image_url(image.pk)).json()
        assert body == {
            "id": image.pk, "original_name": "cat.jpg", "state": "indexed", "error": "", "error_code": "",
            "width": 320, "height": 240,
            "byte_size": image.byte_size, "created_at": image.created_at.isoformat(), "tags": ["cats"],
            "url": reverse("gallery:detail", args=[image.pk]), "thumbnail_url": image.thumbnail.url,
            "owner": "alice",
        }

    def test_a_file_the_worker_found_damaged_says_why_with_the_upload_refusal_code(self, client, user, secret):
        data = images.jpeg(1, size=(640, 480))
        image = store(data[: len(data) // 2], "cut.jpg", owner=user)
        with TestCase.captureOnCommitCallbacks(execute=True):
            image_embed(image_id=image.pk, claim_token="api-test")
        body = client.get(image_url(image.pk), headers=bearer(secret)).json()
        assert (body["state"], body["error_code"]) == ("failed", "damaged")
        assert body["error"].startswith("The file is damaged or truncated and cannot be decoded")

    @pytest.mark.parametrize("image_id", ["999", "abc", "-1", "1.5", "99999999999999999999999", "%00"])
    def test_an_unknown_image_is_not_found(self, client, db, image_id):
        assert_error(client.get(image_url(image_id)), 404, "image_not_found")

    def test_another_users_private_image_is_not_found(self, client, other_user, secret):
        theirs = indexed(images.jpeg(1), owner=other_user, hidden=True)
        queued = store(images.jpeg(2), owner=other_user)
        for image in (theirs, queued):
            assert_error(client.get(image_url(image.pk), headers=bearer(secret)), 404, "image_not_found")
            assert_error(client.delete(image_url(image.pk), headers=bearer(secret)), 404, "image_not_found")
        assert Image.objects.count() == 2

    def test_an_owner_deletes_their_image(self, client, user, secret):
        image = indexed(images.jpeg(1), owner=user)
        response = client.delete(image_url(image.pk), headers=bearer(secret))
        assert response.status_code == 204 and response.content == b""
        assert not Image.objects.filter(pk=image.pk).exists()
        assert_error(client.get(image_url(image.pk), headers=bearer(secret)), 404, "image_not_found")
        assert_error(client.delete(image_url(image.pk), headers=bearer(secret)), 404, "image_not_found")

    def test_a_visible_image_of_someone_else_is_forbidden_to_delete(self, client, other_user, secret):
        image = indexed(images.jpeg(1), owner=other_user)
        assert_error(client.delete(image_url(image.pk), headers=bearer(secret)), 403, "not_owner")
        assert Image.objects.filter(pk=image.pk).exists()

    def test_staff_delete_any_image(self, client, staff_user, other_user):
        image = indexed(images.jpeg(1), owner=other_user, hidden=True)
        _, staff_secret = api_token_create(user=staff_user, name="admin script")
        assert client.delete(image_url(image.pk), headers=bearer(staff_secret)).status_code == 204

    def test_anonymous_deletes_are_refused(self, client, db):
        image = indexed(images.jpeg(1))
        assert_error(client.delete(image_url(image.pk)), 401, "not_authenticated")
        assert Image.objects.filter(pk=image.pk).exists()


class TestErrors:
    @pytest.mark.parametrize(("method", "url"), [("put", IMAGES_URL), ("get", IMAGES_URL), ("post", image_url(1)),
                                                 ("patch", image_url(1)), ("post", "/api/v1/openapi.json")])
    def test_a_wrong_method_is_not_allowed(self, client, user, secret, method, url):
        response = getattr(client, method)(url, headers=bearer(secret))
        assert_error(response, 405, "method_not_allowed")
        assert response["Allow"]

    @pytest.mark.parametrize("url", ["/api/", "/api/v1/", "/api/v1/nothing", "/api/v2/search", "/api/v1/images/1/x"])
    def test_an_unknown_address_is_a_json_404(self, client, db, url):
        assert_error(client.get(url), 404, "not_found")

    def test_a_bad_content_length_is_refused(self, client, user, secret):
        response = client.post(IMAGES_URL, {"image": upload_file("a.jpg", images.jpeg(1))}, headers=bearer(secret),
                               CONTENT_LENGTH="many")
        assert_error(response, 400, "invalid_content_length")


def garbage_bodies() -> list[tuple[str, bytes]]:
    big_png = io.BytesIO()
    PILImage.new("RGB", (1, 1)).save(big_png, "PNG")
    return [
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2, 3]"),
        ("application/json", json.dumps({"image_id": {"x": 1}, "k": [1], "box": "a,b", "url": 5}).encode()),
        ("application/json", b"\xff\xfe\x00garbage"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n"),
        ("multipart/form-data", b"no boundary at all"),
        ("multipart/form-data; boundary=", b"--\r\n"),
        ("application/x-www-form-urlencoded", b"k=%ZZ&box=1,2&&=&image_id=--1"),
        ("text/plain", b"hello"),
        ("image/png", big_png.getvalue()),
        ("", b"\x00" * 100),
    ]


@pytest.mark.parametrize(("content_type", "body"), garbage_bodies())
@pytest.mark.parametrize("authenticated", [False, True])
def test_garbage_never_gets_html_or_a_server_error(client, user, secret, content_type, body, authenticated):
    image = indexed(images.jpeg(1), owner=user)
    urls = [IMAGES_URL, image_url(image.pk), image_url("x"), "/api/v1/search", "/api/v1/openapi.json",
            "/api/v1/docs/", "/api/v1/nope"]
    headers = bearer(secret) if authenticated else {}
    for url in urls:
        for method in ("get", "post", "put", "delete", "patch", "options"):
            response = client.generic(method.upper(), url, body, content_type=content_type, headers=headers)
            assert response.status_code < 500, (method, url, response.content[:300])
            if response.status_code >= 400:
                assert response["Content-Type"] == "application/json", (method, url)
                assert set(response.json()) == {"code", "message"}
    # A delete in the loop above may have removed the image; nothing else may have changed.
    assert Image.objects.exclude(pk=image.pk).count() == 0


def test_a_request_refused_before_any_view_is_answered_in_json(client, db):
    response = client.get("/api/v1/openapi.json", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert "text/html" in client.get("/", HTTP_HOST="evil.example")["Content-Type"], "pages keep their own"


def test_a_crash_is_answered_in_json_and_logged(client, db, monkeypatch, caplog):
    from api import views

    def crash(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views.gallery_selectors, "image_list_visible", crash)
    response = client.get(image_url(1))
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "a bug" in caplog.text


def test_a_crash_outside_any_view_is_answered_in_json_under_the_api(rf):
    from api.views import server_error

    assert json.loads(server_error(rf.get("/api/v1/images/1")).content)["code"] == "internal_error"
    assert "text/html" in server_error(rf.get("/"))["Content-Type"]


def test_clusters_count_and_show_only_what_the_caller_may_see(client, user, other_user, settings):
    from tests.gallery.test_browse import two_groups

    groups = two_groups(settings, user, other_user)
    secret, private = groups["secret"], groups["private"]

    listed = client.get("/api/v1/clusters").json()["results"]
    assert [(c["id"], c["number"], c["count"]) for c in listed] == [(groups["big"].pk, 1, 5)]
    shown = {r["id"] for r in listed[0]["representatives"]}
    assert len(shown) == 4 and secret.pk not in shown
    page = client.get(listed[0]["images_url"]).json()
    assert page["count"] == 5 and page["pages"] == 1
    assert {r["id"] for r in page["results"]} == {i.pk for i in groups["public"]}
    assert_error(client.get(f"/api/v1/clusters/{groups['small'].pk}/images"), 404, "cluster_not_found")

    client.force_login(other_user)
    counts = {c["id"]: c["count"] for c in client.get("/api/v1/clusters").json()["results"]}
    assert counts == {groups["big"].pk: 6, groups["small"].pk: len(private)}
