"""POST /api/v1/search, against the real embedder and index."""
import datetime
import json

import pytest
from django.utils import timezone

from core.fetch import fetch_slot
from gallery.models import Image, Tag
from gallery.services import image_delete
from search.models import Embedding
from tests import images
from tests.api.conftest import bearer
from tests.conftest import store, store_indexed, upload_file

SEARCH = "/api/v1/search"


@pytest.fixture
def gallery(db, clean_index):
    return [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(6)]


@pytest.fixture
def empty(db, clean_index) -> None:
    """No images: for requests refused before anything is searched, or that only need an answer."""


@pytest.fixture
def one(db, clean_index) -> Image:
    return store_indexed(images.jpeg(1), "one.jpg")


def by_upload(client, data: bytes, **fields):
    return client.post(SEARCH, {"image": upload_file("q.jpg", data), **fields}, headers=fields.pop("headers", {}))


def by_json(client, body: dict, **extra):
    return client.post(SEARCH, json.dumps(body), content_type="application/json", **extra)


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [result["id"] for result in response.json()["results"]]


def assert_error(response, status: int, code: str, message: str = "") -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code, body
    assert message in body["message"]


class TestByUpload:
    def test_the_same_picture_comes_first_as_the_same_file(self, client, gallery):
        response = by_upload(client, images.jpeg(3))
        body = response.json()
        first = body["results"][0]
        assert first == {"id": gallery[3].pk, "original_name": "picture-3.jpg", "score": first["score"],
                         "match": first["match"], "verdict": "same_file", "url": f"/images/{gallery[3].pk}/",
                         "thumbnail_url": gallery[3].thumbnail.url}
        assert first["score"] == first["match"] == 1.0
        # The rest in the re-ranked order, which the cosine alone need not follow; the match does.
        assert sorted(r["id"] for r in body["results"][1:]) == sorted(image.pk for i, image in enumerate(gallery)
                                                                      if i != 3)
        assert all(-1 <= r["score"] <= r["match"] < first["score"] for r in body["results"][1:])
        matches = [r["match"] for r in body["results"]]
        assert matches == sorted(matches, reverse=True)
        assert body["took_ms"] > 0 and body["has_more"] is False

    def test_the_query_is_not_stored(self, client, empty):
        assert by_upload(client, images.jpeg(99)).status_code == 200
        assert not Image.objects.exists()

    def test_results_come_a_page_at_a_time(self, client, gallery):
        first = by_upload(client, images.jpeg(1), k=4)
        second = by_upload(client, images.jpeg(1), k=4, offset=4)
        assert len(ids(first)) == 4 and first.json()["has_more"] is True
        assert len(ids(second)) == 2 and second.json()["has_more"] is False
        assert sorted(ids(first) + ids(second)) == sorted(image.pk for image in gallery)

    def test_a_minimum_similarity_leaves_out_weak_matches(self, client, gallery):
        assert ids(by_upload(client, images.jpeg(2), min_score="0.99")) == [gallery[2].pk]

    def test_a_region_is_searched_by_itself(self, client, db, clean_index):
        whole = images.picture(5, (640, 480))
        left = store_indexed(images.encode(whole.crop((0, 0, 320, 480)), "JPEG", quality=92), "left.jpg")
        right = store_indexed(images.encode(whole.crop((320, 0, 640, 480)), "JPEG", quality=92), "right.jpg")
        for i in range(3):
            store_indexed(images.jpeg(50 + i), f"other-{i}.jpg")
        query = images.encode(whole, "JPEG", quality=92)
        assert ids(by_upload(client, query, box="0,0,320,480"))[0] == left.pk
        response = by_upload(client, query, box="320,0,320,480")
        assert ids(response)[0] == right.pk
        assert response.json()["results"][0]["verdict"] != "same_file"

    @pytest.mark.parametrize(("data", "status", "code"), [
        (b"", 400, "empty"),
        (b"not an image at all", 415, "not_an_image"),
        (images.encode(images.picture(1), "BMP"), 415, "unsupported_format"),
        (images.jpeg(1)[:300], 400, "damaged"),
    ])
    def test_a_bad_picture_gets_a_clear_error(self, client, db, data, status, code):
        assert_error(by_upload(client, data), status, code)

    def test_a_picture_over_the_limit_is_too_large(self, client, db, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1000
        assert_error(by_upload(client, images.jpeg(1)), 413, "too_large")

    def test_a_body_declared_too_large_is_refused_unread(self, client, db):
        response = client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(1))}, CONTENT_LENGTH=str(10**12))
        assert_error(response, 413, "request_too_large")


class TestParameters:
    @pytest.mark.parametrize("k", ["0", "-3", "100000000000", "many", "2.5"])
    def test_a_bad_k_gets_a_clear_error(self, client, empty, k):
        assert_error(by_upload(client, images.jpeg(1), k=k), 400, "invalid_parameter", "k (the number of results)")

    @pytest.mark.parametrize("k", [0, -1, 10**12, "x", None, [3], True])
    def test_a_bad_k_in_json_gets_a_clear_error(self, client, one, k):
        response = by_json(client, {"image_id": one.pk, "k": k})
        if k is None:
            assert response.status_code == 200, "null means the default"
        else:
            assert_error(response, 400, "invalid_parameter", "k (the number of results)")

    @pytest.mark.parametrize(("box", "message"), [
        ("0,0,0,10", "no area"), ("300,200,100,100", "not inside the picture"), ("a,b,c,d", "x,y,width,height"),
        ("0,0,4,4", "too small"),
    ])
    def test_a_bad_box_gets_a_clear_error(self, client, empty, box, message):
        assert_error(by_upload(client, images.jpeg(1), box=box), 400, "invalid_box", message)

    @pytest.mark.parametrize("box", [{"x": 0, "y": 0, "width": 0, "height": 5}, {"x": 1}, [0, 0, 5, 5], "x"])
    def test_a_bad_box_in_json_gets_a_clear_error(self, client, one, box):
        assert_error(by_json(client, {"image_id": one.pk, "box": box}), 400, "invalid_box")

    def test_a_box_in_json_is_an_object(self, client, one):
        response = by_json(client, {"image_id": one.pk, "box": {"x": 0, "y": 0, "width": 160, "height": 120}})
        assert response.status_code == 200

    def test_filters_narrow_the_results(self, client, gallery, user):
        beach = Tag.objects.create(name="beach")
        gallery[1].tags.add(beach)
        gallery[2].tags.add(beach)
        Image.objects.filter(pk=gallery[4].pk).update(owner=user)
        Image.objects.filter(pk=gallery[5].pk).update(created_at=timezone.now() - datetime.timedelta(days=30))
        assert sorted(ids(by_upload(client, images.jpeg(1), tags="beach"))) == [gallery[1].pk, gallery[2].pk]
        assert sorted(ids(by_json(client, {"image_id": gallery[0].pk, "tags": ["Beach"]}))) == [
            gallery[1].pk, gallery[2].pk]
        assert ids(by_json(client, {"image_id": gallery[0].pk, "uploader": "alice"})) == [gallery[4].pk]
        old = (timezone.now() - datetime.timedelta(days=20)).date().isoformat()
        assert ids(by_upload(client, images.jpeg(1), uploaded_to=old)) == [gallery[5].pk]
        assert gallery[5].pk not in ids(by_json(client, {"image_id": gallery[0].pk, "uploaded_from": old}))

    @pytest.mark.parametrize(("field", "value"), [("uploaded_from", "yesterday"), ("uploaded_to", "2024-13-01"),
                                                  ("min_score", "2"), ("offset", "-1")])
    def test_a_bad_option_gets_a_clear_error(self, client, empty, field, value):
        assert_error(by_upload(client, images.jpeg(1), **{field: value}), 400, "invalid_parameter", field)


class TestByImage:
    def test_it_finds_the_others_by_the_stored_vector(self, client, gallery):
        result = ids(by_json(client, {"image_id": gallery[0].pk, "k": 10}))
        assert sorted(result) == sorted(image.pk for image in gallery[1:])

    def test_it_takes_form_fields_too(self, client, gallery):
        assert gallery[0].pk not in ids(client.post(SEARCH, {"image_id": str(gallery[0].pk)}))

    def test_an_unknown_image_is_not_found(self, client, db):
        assert_error(by_json(client, {"image_id": 424242}), 404, "not_found")

    def test_a_deleted_image_is_not_found(self, client, one):
        deleted = one.pk
        image_delete(image=one)
        assert_error(by_json(client, {"image_id": deleted}), 404, "not_found")

    def test_another_users_private_image_is_not_found(self, client, other_user, secret, clean_index):
        theirs = store_indexed(images.jpeg(1), owner=other_user)
        Image.objects.filter(pk=theirs.pk).update(hidden=True)
        assert_error(by_json(client, {"image_id": theirs.pk}, headers=bearer(secret)), 404, "not_found")

    def test_an_image_not_indexed_yet_is_a_conflict(self, client, user, secret):
        queued = store(images.jpeg(1), owner=user)
        assert_error(by_json(client, {"image_id": queued.pk}, headers=bearer(secret)), 409, "not_indexed")

    @pytest.mark.parametrize("value", ["seven", -1, 0, 2**70, 1.5, [1], {"id": 1}, True])
    def test_an_image_id_that_is_not_an_id_gets_a_clear_error(self, client, db, value):
        assert_error(by_json(client, {"image_id": value}), 400, "invalid_parameter", "image_id")


class TestByUrl:
    def test_the_server_fetches_the_picture(self, client, one, picture_server):
        served = store_indexed(picture_server.picture, "served.jpg")
        response = by_json(client, {"url": picture_server.url("/picture.jpg")})
        assert ids(response)[0] == served.pk
        assert response.json()["results"][0]["verdict"] == "same_file"
        assert ids(client.post(SEARCH, {"url": picture_server.url("/picture.jpg")}))[0] == served.pk
        assert Image.objects.count() == 2, "the fetched picture is not stored"

    @pytest.mark.parametrize(("path", "status"), [("/page.html", 415), ("/to-private", 400), ("/huge.jpg", 413),
                                                  ("/slow.jpg", 400), ("/missing.jpg", 400)])
    def test_a_bad_url_gets_a_clear_error(self, client, empty, picture_server, settings, path, status):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1024 * 1024
        response = by_json(client, {"url": picture_server.url(path)})
        assert response.status_code == status
        assert response.json()["message"]

    @pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x.jpg", "file:///etc/passwd", "", 5])
    def test_a_url_that_may_not_be_fetched_is_refused(self, client, db, url):
        response = by_json(client, {"url": url} if url != "" else {"url": url, "k": 3})
        assert response.status_code == 400
        assert response.json()["code"] in {"url_forbidden", "invalid_url", "missing_query"}

    def test_url_fetches_have_a_limit_of_their_own(self, client, empty, picture_server, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_URL_FETCH = "1/day"
        assert by_json(client, {"url": picture_server.url("/picture.jpg")}).status_code == 200
        refused = by_json(client, {"url": picture_server.url("/picture.jpg")})
        assert_error(refused, 429, "rate_limited", "URL fetches")
        assert int(refused["Retry-After"]) >= 1
        assert by_upload(client, images.jpeg(1)).status_code == 200, "other searches go on"

    def test_a_fetch_past_the_limit_in_flight_is_refused_at_once(self, client, empty, picture_server, settings):
        settings.LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT = 1
        settings.LOOKALIKE_URL_FETCH_TIMEOUT = 3.0
        with fetch_slot(settings.URL_FETCH_SLOTS_DIR, 1, retry_after=1):  # another request's fetch
            refused = by_json(client, {"url": picture_server.url("/picture.jpg")})
        assert_error(refused, 503, "url_busy", "as many pictures as it may at once")
        assert refused["Retry-After"] == "3"
        assert by_json(client, {"url": picture_server.url("/picture.jpg")}).status_code == 200, "once it is free"


class TestRequests:
    def test_nothing_to_search_with_is_a_clear_error(self, client, db):
        assert_error(client.post(SEARCH, {"k": "3"}), 400, "missing_query")
        assert_error(by_json(client, {}), 400, "missing_query")
        assert_error(client.post(SEARCH), 400, "missing_query")

    def test_two_things_to_search_with_are_a_clear_error(self, client, one):
        response = by_upload(client, images.jpeg(1), image_id=str(one.pk))
        assert_error(response, 400, "ambiguous_query", "image and image_id")

    @pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b"\"text\"", b"\xff\xfe"])
    def test_bad_json_is_a_clear_error(self, client, db, body):
        assert_error(client.post(SEARCH, body, content_type="application/json"), 400, "invalid_json")

    def test_another_content_type_is_unsupported(self, client, db):
        assert_error(client.post(SEARCH, b"image bytes", content_type="image/jpeg"), 415, "unsupported_content_type")

    def test_anonymous_search_follows_the_public_gallery_setting(self, client, empty, secret, settings):
        assert by_upload(client, images.jpeg(1)).status_code == 200
        settings.LOOKALIKE_PUBLIC_GALLERY = False
        assert_error(by_upload(client, images.jpeg(1)), 401, "not_authenticated")
        assert client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(1))},
                           headers=bearer(secret)).status_code == 200

    def test_a_bad_token_is_refused_though_anonymous_may_search(self, client, empty):
        response = client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(1))},
                               headers=bearer("lka_not-a-token"))
        assert_error(response, 401, "invalid_token")

    def test_searches_are_rate_limited(self, client, one, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "2/day"
        assert by_upload(client, images.jpeg(1)).status_code == 200
        assert by_json(client, {"image_id": one.pk}).status_code == 200
        refused = by_upload(client, images.jpeg(1))
        assert_error(refused, 429, "rate_limited", "Too many searches")
        assert 1 <= int(refused["Retry-After"]) <= 86400

    def test_vectors_of_another_model_make_search_unavailable(self, client, one):
        Embedding.objects.filter(image=one).update(backbone_version="an-older-recipe")
        assert_error(by_upload(client, images.jpeg(1)), 503, "search_unavailable", "run `python manage.py reindex`")
