import datetime
import itertools
import re

import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from PIL import ImageOps

from core.fetch import fetch_slot
from gallery.models import Image, Tag
from gallery.services import image_delete
from search import index_writer
from tests import images
from tests.conftest import store, store_indexed, upload_file

FETCH = {"HTTP_X_REQUESTED_WITH": "fetch"}


@pytest.fixture
def gallery(db, clean_index):
    return [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(6)]


def results(response) -> list:
    return response.context["outcome"].results


def server_timing(response) -> dict[str, float]:
    parts = (metric.strip().split(";dur=") for metric in response["Server-Timing"].split(","))
    return {name: float(duration) for name, duration in parts}


def result_ids(response) -> list[int]:
    return [r.image.pk for r in results(response)]


def search(client, data: bytes | None = None, **fields):
    if data is not None:
        fields["image"] = upload_file("q.jpg", data)
    return client.post(reverse("search:search"), fields)


class TestSearchPage:
    def test_it_offers_a_drop_zone_a_url_field_and_options(self, client, db):
        body = client.get(reverse("search:search")).content.decode()
        assert "data-dropzone" in body and 'name="image"' in body
        assert 'name="url"' in body and "Ctrl+V" in body
        for field in ("k", "min_score", "tags", "uploader", "uploaded_from", "uploaded_to", "box"):
            assert f'name="{field}"' in body

    def test_the_script_gets_the_results_alone(self, client, gallery):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(3))}, **FETCH)
        body = response.content.decode()
        assert "data-result-grid" in body and "<html" not in body


class TestSearchByPicture:
    def test_the_same_file_comes_first_labelled_as_such(self, client, gallery):
        response = search(client, images.jpeg(3))
        assert response.status_code == 200
        first = results(response)[0]
        assert first.image == gallery[3] and first.verdict == "same_file"
        assert first.score == 1.0
        body = response.content.decode()
        assert "Same file" in body and "100%" in body
        assert 'src="data:image/jpeg;base64,' in body, "the query is shown back without being stored"

    def test_an_edited_copy_above_the_threshold_is_labelled_as_one(self, client, gallery, settings):
        settings.LOOKALIKE_EDITED_COPY_THRESHOLD = 0.9
        edited = images.encode(images.picture(3).crop((10, 10, 300, 230)), "JPEG", quality=40)
        response = search(client, edited)
        first, *rest = results(response)
        assert first.image == gallery[3] and first.verdict == "edited_copy" and first.score >= 0.9
        assert all(r.verdict == "similar" for r in rest if r.score < 0.9)
        assert "Edited copy" in response.content.decode()

    def test_without_a_threshold_no_result_is_called_an_edited_copy(self, client, gallery, settings, monkeypatch):
        from search import verdicts

        settings.LOOKALIKE_EDITED_COPY_THRESHOLD = None
        monkeypatch.setattr(verdicts, "CALIBRATED_THRESHOLDS", {})
        edited = images.encode(images.picture(3).crop((10, 10, 300, 230)), "JPEG", quality=40)
        assert {r.verdict for r in results(search(client, edited))} == {"similar"}

    def test_a_mirrored_copy_finds_its_original_first(self, client, gallery):
        mirrored = images.encode(ImageOps.mirror(images.picture(4)), "JPEG", quality=90)
        response = search(client, mirrored)
        assert result_ids(response)[0] == gallery[4].pk
        # Well below 1: the gallery vector also carries the picture's small view.
        assert results(response)[0].score > 0.95

    def test_a_copy_in_a_wide_plain_frame_is_searched_inside_it(self, client, db, clean_index):
        cats = [store_indexed(images.bench_image("cat", n).read_bytes(), f"cat-{n}.jpg") for n in range(1, 7)]
        original = PILImage.open(images.bench_image("cat", 3)).convert("RGB")
        framed = ImageOps.expand(original, border=int(0.3 * max(original.size)), fill=(230, 40, 40))
        response = search(client, images.encode(framed, "JPEG", quality=85))
        first = results(response)[0]
        # The whole framed picture scores about 0.88 against its original; its inside about 0.97.
        assert first.image == cats[2] and first.score > 0.95

    def test_it_says_how_long_embedding_and_the_index_took(self, client, gallery):
        timing = server_timing(search(client, images.jpeg(3)))
        assert set(timing) == {"embed", "index"}
        assert timing["embed"] > 0 and timing["index"] > 0

    def test_the_query_is_not_added_to_the_gallery(self, client, gallery):
        search(client, images.jpeg(99))
        assert Image.objects.count() == len(gallery)

    def test_a_signed_in_user_may_ask_to_add_the_picture_to_the_gallery(self, alice_client, user, gallery):
        response = search(alice_client, images.jpeg(99), add_to_gallery="1")
        added = Image.objects.get(owner=user)
        assert "Added to the gallery as" in response.content.decode()
        assert Image.objects.count() == len(gallery) + 1 and added.state == Image.State.QUEUED
        again = search(alice_client, images.jpeg(99), add_to_gallery="1")
        expected = f'Already in the gallery as <a href="/images/{added.pk}/">image #{added.pk}</a>'
        assert expected in again.content.decode()

    def test_a_picture_identical_to_an_image_you_cannot_see_is_added_as_yours(self, alice_client, user,
                                                                                 other_user, gallery):
        theirs = store(images.jpeg(99), "bobs-private.jpg", owner=other_user)
        Image.objects.filter(pk=theirs.pk).update(state=Image.State.INDEXED, hidden=True)
        body = search(alice_client, images.jpeg(99), add_to_gallery="1").content.decode()
        mine = Image.objects.get(owner=user)
        assert f'Added to the gallery as <a href="/images/{mine.pk}/">image #{mine.pk}</a>' in body
        assert f"#{theirs.pk}" not in body and "bobs-private" not in body

    def test_an_anonymous_visitor_cannot_add_to_the_gallery(self, client, gallery):
        search(client, images.jpeg(99), add_to_gallery="1")
        assert Image.objects.count() == len(gallery)

    def test_it_returns_what_exists_when_k_is_larger_than_the_gallery(self, client, gallery):
        assert sorted(result_ids(search(client, images.jpeg(1), k=96))) == sorted(i.pk for i in gallery)

    @pytest.mark.parametrize("k", ["0", "-5", "many", "100000", "2.5"])
    def test_a_k_out_of_bounds_gets_a_clear_message(self, client, gallery, k):
        response = search(client, images.jpeg(1), k=k)
        assert response.status_code == 400
        assert "must be a whole number from 1 to 500" in response.context["error"]

    def test_a_minimum_similarity_hides_weak_matches(self, client, gallery):
        response = search(client, images.jpeg(3), min_score="0.99")
        assert result_ids(response) == [gallery[3].pk]

    def test_it_says_plainly_when_nothing_passes_the_minimum(self, client, gallery):
        response = search(client, images.jpeg(77), min_score="0.995")
        assert response.status_code == 200 and results(response) == []
        assert "Nothing matches 100% or more" in response.content.decode()

    @pytest.mark.parametrize("value", ["-0.1", "1.5", "high"])
    def test_a_minimum_out_of_range_gets_a_clear_message(self, client, gallery, value):
        response = search(client, images.jpeg(3), min_score=value)
        assert response.status_code == 400
        assert "min_score must be a match from 0 to 1" in response.context["error"]

    def test_results_come_a_page_at_a_time(self, client, gallery):
        everything = result_ids(search(client, images.jpeg(2), k=12))
        first = search(client, images.jpeg(2), k=2)
        assert result_ids(first) == everything[:2] and first.context["outcome"].has_more
        assert "Load more" in first.content.decode()
        second = search(client, images.jpeg(2), k=2, offset=2)
        assert result_ids(second) == everything[2:4]
        last = search(client, images.jpeg(2), k=2, offset=4)
        assert result_ids(last) == everything[4:6] and not last.context["outcome"].has_more
        assert "Load more" not in last.content.decode()

    def test_an_offset_past_the_end_says_there_is_no_more(self, client, gallery):
        response = search(client, images.jpeg(2), k=12, offset=12)
        assert "No more results" in response.content.decode()

    def test_an_empty_gallery_says_there_are_no_matches(self, client, db, clean_index):
        response = search(client, images.jpeg(1))
        assert response.status_code == 200
        assert "No matches" in response.content.decode()

    @pytest.mark.parametrize(("data", "status", "message"), [
        (b"", 400, "The file is empty."),
        (b"plain text", 415, "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", 415,
         "SVG images are not accepted"),
        (images.jpeg(1)[:300], 400, "damaged"),
    ])
    def test_a_bad_picture_gets_a_clear_message(self, client, db, data, status, message):
        response = search(client, data)
        assert response.status_code == status
        assert message in response.context["error"]

    def test_a_picture_over_the_size_limit_is_refused_with_413(self, client, db, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1000
        response = search(client, images.jpeg(1))
        assert response.status_code == 413
        assert "larger than the limit" in response.context["error"]

    def test_no_picture_gets_a_clear_message(self, client, db):
        response = client.post(reverse("search:search"), {})
        assert response.status_code == 400
        assert "Choose a picture, paste one, give its URL, or type words to search with." in response.content.decode()

    def test_a_deleted_image_leaves_results_at_once(self, client, gallery):
        index_writer.index_sync()
        image_delete(image=gallery[3])
        response = search(client, images.jpeg(3), k=96)
        assert gallery[3].pk not in result_ids(response)
        assert len(result_ids(response)) == 5

    def test_a_hidden_image_never_comes_back(self, client, gallery):
        index_writer.index_sync()
        gallery[3].hidden = True
        gallery[3].save(update_fields=["hidden"])
        response = search(client, images.jpeg(3), k=96)
        assert gallery[3].pk not in result_ids(response)
        assert len(result_ids(response)) == 5

    def test_an_image_indexed_after_the_snapshot_is_found(self, client, gallery):
        index_writer.index_sync()
        late = store_indexed(images.jpeg(42), "late.jpg")
        assert result_ids(search(client, images.jpeg(42)))[0] == late.pk


class TestRegion:
    def test_a_region_finds_the_image_it_was_cut_from(self, client, db, clean_index):
        whole = images.picture(5, (640, 480))
        left, right = whole.crop((0, 0, 320, 480)), whole.crop((320, 0, 640, 480))
        left_image = store_indexed(images.encode(left, "JPEG", quality=92), "left.jpg")
        right_image = store_indexed(images.encode(right, "JPEG", quality=92), "right.jpg")
        for i in range(4):
            store_indexed(images.jpeg(50 + i), f"other-{i}.jpg")
        query = images.encode(whole, "JPEG", quality=92)
        assert result_ids(search(client, query, box="0,0,320,480"))[0] == left_image.pk
        response = search(client, query, box="320,0,320,480")
        assert result_ids(response)[0] == right_image.pk
        assert response.context["outcome"].results[0].verdict != "same_file", "a region is not the file"
        assert 'data-box="320,0,320,480"' in response.content.decode()

    def test_a_region_of_a_large_photo_is_in_its_own_pixels(self, client, db, clean_index):
        whole = images.picture(6, (4000, 3000))
        right_image = store_indexed(images.encode(whole.crop((2000, 0, 4000, 3000)), "JPEG"), "right.jpg")
        store_indexed(images.encode(whole.crop((0, 0, 2000, 3000)), "JPEG"), "left.jpg")
        response = search(client, images.encode(whole, "JPEG", quality=85), box="2000,0,2000,3000")
        assert result_ids(response)[0] == right_image.pk

    @pytest.mark.parametrize(("box", "message"), [
        ("0,0,0,10", "no area"),
        ("10,10,-5,20", "no area"),
        ("300,200,100,100", "not inside the picture, which is 320 × 240 pixels"),
        ("-1,0,10,10", "not inside the picture"),
        ("0,0,4,4", "too small"),
        ("a,b,c,d", "x,y,width,height"),
        ("1,2,3", "x,y,width,height"),
    ])
    def test_a_bad_region_gets_a_clear_message(self, client, gallery, box, message):
        response = search(client, images.jpeg(3), box=box)
        assert response.status_code == 400
        assert message in response.context["error"]


class TestFilters:
    @pytest.fixture
    def tagged(self, gallery, user, other_user):
        beach, dog = Tag.objects.create(name="beach"), Tag.objects.create(name="dog")
        gallery[1].tags.add(beach, dog)
        gallery[2].tags.add(beach)
        Image.objects.filter(pk__in=[gallery[1].pk, gallery[4].pk]).update(owner=user)
        Image.objects.filter(pk=gallery[2].pk).update(owner=other_user)
        Image.objects.filter(pk=gallery[5].pk).update(created_at=timezone.now() - datetime.timedelta(days=30))
        return gallery

    def test_by_tag(self, client, tagged):
        assert sorted(result_ids(search(client, images.jpeg(1), tags="Beach"))) == [tagged[1].pk, tagged[2].pk]
        assert result_ids(search(client, images.jpeg(1), tags="beach, dog")) == [tagged[1].pk]

    def test_by_uploader(self, client, tagged):
        assert sorted(result_ids(search(client, images.jpeg(1), uploader="alice"))) == [tagged[1].pk, tagged[4].pk]

    def test_by_upload_date(self, client, tagged):
        month_ago = (timezone.now() - datetime.timedelta(days=30)).date()
        old = search(client, images.jpeg(1), uploaded_to=(month_ago + datetime.timedelta(days=1)).isoformat())
        assert result_ids(old) == [tagged[5].pk]
        recent = search(client, images.jpeg(1), uploaded_from=timezone.now().date().isoformat(), k=96)
        assert tagged[5].pk not in result_ids(recent) and len(result_ids(recent)) == 5

    def test_a_filter_that_leaves_nothing_says_so(self, client, tagged):
        response = search(client, images.jpeg(1), tags="volcano")
        assert results(response) == []
        assert "No matches with these filters" in response.content.decode()

    @pytest.mark.parametrize(("field", "value", "message"), [
        ("uploaded_from", "yesterday", "uploaded_from must be a date written as YYYY-MM-DD"),
        ("uploaded_to", "2024-13-01", "uploaded_to must be a date"),
    ])
    def test_a_bad_date_gets_a_clear_message(self, client, gallery, field, value, message):
        response = search(client, images.jpeg(1), **{field: value})
        assert response.status_code == 400
        assert message in response.context["error"]

    def test_dates_in_the_wrong_order_get_a_clear_message(self, client, gallery):
        response = search(client, images.jpeg(1), uploaded_from="2024-05-02", uploaded_to="2024-05-01")
        assert response.status_code == 400
        assert "uploaded_from is after uploaded_to" in response.context["error"]

    def test_a_wide_filter_goes_through_the_index(self, client, tagged, monkeypatch):
        from search import selectors

        monkeypatch.setattr(selectors, "EXACT_SEARCH_MAX_CANDIDATES", 1)
        assert sorted(result_ids(search(client, images.jpeg(1), tags="beach"))) == [tagged[1].pk, tagged[2].pk]


class TestSearchByUrl:
    def test_the_server_fetches_the_picture(self, client, gallery, picture_server):
        picture = store_indexed(picture_server.picture, "served.jpg")
        response = client.post(reverse("search:search"), {"url": picture_server.url("/picture.jpg")})
        assert response.status_code == 200
        assert results(response)[0].image == picture and results(response)[0].verdict == "same_file"
        assert Image.objects.count() == len(gallery) + 1, "the fetched picture is not stored"

    @pytest.mark.parametrize(("path", "status", "message"), [
        ("/page.html", 415, "did not give a usable picture"),
        ("/slow.jpg", 400, "did not send the picture within 1 seconds"),
        ("/to-private", 400, "only public addresses are fetched"),
        ("/to-metadata", 400, "only public addresses are fetched"),
        ("/huge.jpg", 413, "larger than"),
        ("/missing.jpg", 400, "404"),
    ])
    def test_a_bad_url_gets_a_clear_message(self, client, gallery, picture_server, settings, path, status, message):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1024 * 1024
        response = client.post(reverse("search:search"), {"url": picture_server.url(path)})
        assert response.status_code == status
        assert message in response.context["error"]

    def test_the_loopback_is_refused_by_default(self, client, gallery):
        response = client.post(reverse("search:search"), {"url": "http://127.0.0.1:8000/media/x.jpg"})
        assert response.status_code == 400
        assert "only public addresses" in response.context["error"]

    def test_a_fetch_past_the_limit_in_flight_is_refused_at_once(self, client, db, picture_server, settings):
        settings.LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT = 2
        with fetch_slot(settings.URL_FETCH_SLOTS_DIR, 2, retry_after=1), \
                fetch_slot(settings.URL_FETCH_SLOTS_DIR, 2, retry_after=1):  # two other requests' fetches
            response = client.post(reverse("search:search"), {"url": picture_server.url("/picture.jpg")})
        assert response.status_code == 503
        assert "as many pictures as it may at once; try again in 1 second." in response.context["error"]
        assert response["Retry-After"] == "1"

    def test_a_url_that_is_not_http_is_refused(self, client, gallery):
        response = client.post(reverse("search:search"), {"url": "file:///etc/passwd"})
        assert response.status_code == 400
        assert "Only http:// and https://" in response.context["error"]


class TestFindSimilar:
    def test_it_ranks_the_gallery_by_the_stored_vector_and_leaves_out_the_image_itself(self, client, gallery):
        response = client.get(reverse("search:similar", args=[gallery[0].pk]), {"k": 12})
        assert response.status_code == 200
        assert sorted(result_ids(response)) == sorted(i.pk for i in gallery[1:])
        scores = [r.score for r in results(response)]
        assert scores == sorted(scores, reverse=True)

    def test_it_embeds_nothing(self, client, gallery, monkeypatch):
        from search import runtime

        monkeypatch.setattr(runtime, "embedder_for", lambda backbone: pytest.fail("a gallery image was embedded again"))
        assert client.get(reverse("search:similar", args=[gallery[0].pk])).status_code == 200

    def test_it_embeds_nothing_and_says_so_in_its_timing(self, client, gallery):
        timing = server_timing(client.get(reverse("search:similar", args=[gallery[0].pk])))
        assert timing["embed"] == 0 and timing["index"] > 0

    def test_each_result_links_to_its_own_similar_page(self, client, gallery):
        body = client.get(reverse("search:similar", args=[gallery[0].pk])).content.decode()
        assert reverse("search:similar", args=[gallery[1].pk]) in body

    def test_a_region_of_a_gallery_image_is_searched(self, client, gallery):
        response = client.get(reverse("search:search"), {"image_id": gallery[2].pk, "box": "0,0,160,120"})
        assert response.status_code == 200
        assert result_ids(response)[0] == gallery[2].pk, "a region of the image finds the image itself"

    def test_load_more_asks_for_the_next_page_the_same_way(self, client, gallery):
        body = client.get(reverse("search:similar", args=[gallery[0].pk]), {"k": 2, "tags": ""}).content.decode()
        assert 'id="load-more" method="get"' in body
        assert f'name="image_id" value="{gallery[0].pk}"' in body and 'name="offset" value="2"' in body

    def test_an_unknown_image_is_not_found(self, client, db):
        response = client.get(reverse("search:similar", args=[12345]))
        assert response.status_code == 404
        assert "There is no image #12345" in response.content.decode()

    def test_a_deleted_image_is_not_found(self, client, gallery):
        deleted_id = gallery[0].pk
        image_delete(image=gallery[0])
        assert client.get(reverse("search:similar", args=[deleted_id])).status_code == 404

    def test_someone_elses_image_in_progress_is_not_found(self, client, user, other_user):
        queued = store(images.jpeg(1), owner=user)
        client.force_login(other_user)
        assert client.get(reverse("search:similar", args=[queued.pk])).status_code == 404

    def test_an_image_not_yet_indexed_says_so(self, alice_client, user):
        queued = store(images.jpeg(1), owner=user)
        response = alice_client.get(reverse("search:similar", args=[queued.pk]))
        assert response.status_code == 409
        assert "not indexed yet (queued)" in response.content.decode()

    def test_an_image_id_that_is_not_a_number_gets_a_clear_message(self, client, db):
        response = client.get(reverse("search:search"), {"image_id": "seven"})
        assert response.status_code == 400
        assert "image_id must be the number of a gallery image" in response.context["error"]


def test_vectors_of_another_model_stop_search_with_the_fix(client, gallery):
    from search.models import Embedding

    Embedding.objects.filter(image=gallery[0]).update(backbone_version="an-older-recipe")
    response = search(client, images.jpeg(1))
    assert response.status_code == 503
    assert "run `python manage.py reindex`" in response.context["error"]


class TestRateLimits:
    def test_searches_beyond_the_limit_are_refused_with_retry_after(self, client, gallery, settings):
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "2/minute"
        assert search(client, images.jpeg(1)).status_code == 200
        assert client.get(reverse("search:similar", args=[gallery[0].pk])).status_code == 200
        refused = search(client, images.jpeg(1))
        assert refused.status_code == 429
        assert 0 < int(refused["Retry-After"]) <= 60
        assert "Too many searches: the limit is 2 per minute" in refused.context["error"]
        assert client.get(reverse("search:similar", args=[gallery[0].pk])).status_code == 429

    def test_each_signed_in_user_has_a_budget_of_their_own(self, client, gallery, settings, user, other_user):
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "1/minute"
        client.force_login(user)
        assert search(client, images.jpeg(1)).status_code == 200
        assert search(client, images.jpeg(1)).status_code == 429
        client.force_login(other_user)
        assert search(client, images.jpeg(1)).status_code == 200

    def test_adding_to_the_gallery_counts_against_the_upload_limit(self, alice_client, user, gallery, settings,
                                                                   fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "1/hour"
        added = search(alice_client, images.jpeg(90), add_to_gallery="1").content.decode()
        assert "Added to the gallery as" in added
        upload = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("a.jpg", images.jpeg(91))]})
        assert upload.status_code == 429, "the search page used the budget"
        for seed in range(92, 95):
            response = search(alice_client, images.jpeg(seed), add_to_gallery="1")
            assert response.status_code == 200, "the search itself is still answered"
            assert ("Not added to the gallery: Too many uploaded files: the limit is 1 per hour."
                    in response.content.decode())
        assert Image.objects.filter(owner=user).count() == 1

    def test_adding_to_the_gallery_counts_against_the_quota(self, alice_client, user, gallery, settings):
        settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES = 1
        assert "Added to the gallery as" in search(alice_client, images.jpeg(90), add_to_gallery="1").content.decode()
        refused = search(alice_client, images.jpeg(91), add_to_gallery="1").content.decode()
        assert "Not added to the gallery: You have reached your quota of 1 images" in refused
        assert Image.objects.filter(owner=user).count() == 1

    def test_url_fetches_have_a_limit_of_their_own(self, client, gallery, picture_server, settings):
        settings.LOOKALIKE_RATE_LIMIT_URL_FETCH = "1/minute"
        url = picture_server.url("/picture.jpg")
        assert client.post(reverse("search:search"), {"url": url}).status_code == 200
        refused = client.post(reverse("search:search"), {"url": url})
        assert refused.status_code == 429 and "Too many URL fetches" in refused.context["error"]
        assert search(client, images.jpeg(1)).status_code == 200, "searching by picture is still allowed"


@pytest.fixture
def drawings(db, clean_index):
    """A drawing's two halves among ten other drawings: their shapes share details enough that
    re-ranking puts some results above more alike ones."""
    whole = images.picture(5, (640, 480))
    for box, name in (((0, 0, 320, 480), "left-half.jpg"), ((320, 0, 640, 480), "right-half.jpg")):
        store_indexed(images.encode(whole.crop(box), "JPEG", quality=92), name)
    for i in range(10):
        store_indexed(images.jpeg(100 + i), f"other-{i}.jpg")
    return images.encode(whole, "JPEG", quality=92)


def shown_percents(response) -> list[int]:
    return [int(percent) for percent in re.findall(r'class="score"[^>]*>(\d+)% match<', response.content.decode())]


def test_the_numbers_shown_fall_down_the_list_when_re_ranking_reorders_it(client, drawings):
    response = search(client, drawings, k=12)
    found = results(response)
    cosines = [r.score for r in found]
    assert cosines != sorted(cosines, reverse=True), "re-ranking left this search in cosine order: it tests nothing"
    shown = shown_percents(response)
    assert shown == [r.percent for r in found] and len(shown) == 12
    assert shown == sorted(shown, reverse=True), shown
    # Each is its own cosine, or the higher one of the results ranked after it; the heading's best is the first.
    assert all(r.score <= r.match for r in found)
    assert all(r.match == max(r.score, after.match) for r, after in itertools.pairwise(found))
    assert f"12 matches, best {shown[0]}%" in response.content.decode()

    # The next page goes on below this one: the numbers are matched over every candidate, not a page's.
    first_page = shown_percents(search(client, drawings, k=6))
    second_page = shown_percents(search(client, drawings, k=6, offset=6))
    assert first_page + second_page == shown

    # A minimum cuts the list at one place, by the number shown.
    least = f"{found[5].match - 1e-6:.6f}"
    kept = result_ids(search(client, drawings, k=12, min_score=least))
    assert kept == [r.image.pk for r in found[:len(kept)]] and len(kept) >= 6
    assert all(r.match < float(least) for r in found[len(kept):])
