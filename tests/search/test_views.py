import pytest
from django.urls import reverse
from PIL import ImageOps

from gallery.models import Image
from gallery.services import image_delete
from search import services
from tests import images
from tests.conftest import store, store_indexed, upload_file


@pytest.fixture
def gallery(db, clean_index):
    return [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(6)]


def server_timing(response) -> dict[str, float]:
    parts = (metric.strip().split(";dur=") for metric in response["Server-Timing"].split(","))
    return {name: float(duration) for name, duration in parts}


def result_ids(response) -> list[int]:
    return [r.image.pk for r in response.context["results"]]


class TestSearchByPicture:
    def test_it_offers_a_drop_zone(self, client, db):
        body = client.get(reverse("search:search")).content.decode()
        assert "data-dropzone" in body and 'name="image"' in body

    def test_the_same_picture_comes_first_with_a_full_score(self, client, gallery):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(3))})
        assert response.status_code == 200
        results = response.context["results"]
        assert results[0].image == gallery[3]
        # The gallery vector comes from the re-encoded display copy, hence not exactly 1.
        assert results[0].score > 0.99
        body = response.content.decode()
        assert "100%" in body
        assert 'src="data:image/jpeg;base64,' in body, "the query is shown back without being stored"

    def test_a_mirrored_copy_finds_its_original_first(self, client, gallery):
        mirrored = images.encode(ImageOps.mirror(images.picture(4)), "JPEG", quality=90)
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", mirrored)})
        assert result_ids(response)[0] == gallery[4].pk
        assert response.context["results"][0].score > 0.99

    def test_it_says_how_long_embedding_and_the_index_took(self, client, gallery):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(3))})
        timing = server_timing(response)
        assert set(timing) == {"embed", "index"}
        assert timing["embed"] > 0 and timing["index"] > 0

    def test_the_query_is_not_added_to_the_gallery(self, client, gallery):
        client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(99))})
        assert Image.objects.count() == len(gallery)

    def test_it_returns_what_exists_when_k_is_larger_than_the_gallery(self, client, gallery):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1)), "k": 96})
        assert sorted(result_ids(response)) == sorted(i.pk for i in gallery)

    @pytest.mark.parametrize(("k", "expected"), [("2", 2), ("0", 6), ("-5", 1), ("many", 6), ("100000", 6)])
    def test_k_is_kept_within_bounds(self, client, gallery, settings, k, expected):
        settings.LOOKALIKE_SEARCH_DEFAULT_K = 24
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1)), "k": k})
        assert response.status_code == 200
        assert len(result_ids(response)) == expected

    def test_an_empty_gallery_says_there_are_no_matches(self, client, db, clean_index):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1))})
        assert response.status_code == 200
        assert "No matches" in response.content.decode()

    @pytest.mark.parametrize(("data", "message"), [
        (b"", "The file is empty."),
        (b"plain text", "not an image"),
        (images.jpeg(1)[:300], "damaged"),
    ])
    def test_a_bad_picture_gets_a_clear_message(self, client, db, data, message):
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", data)})
        assert response.status_code == 400
        assert message in response.context["error"]

    def test_no_picture_gets_a_clear_message(self, client, db):
        response = client.post(reverse("search:search"), {})
        assert response.status_code == 400
        assert "Choose a picture" in response.content.decode()

    def test_a_deleted_image_leaves_results_at_once(self, client, gallery):
        services.index_sync()
        image_delete(image=gallery[3])
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(3)), "k": 96})
        assert gallery[3].pk not in result_ids(response)
        assert len(result_ids(response)) == 5

    def test_a_hidden_image_never_comes_back(self, client, gallery):
        services.index_sync()
        gallery[3].hidden = True
        gallery[3].save(update_fields=["hidden"])
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(3)), "k": 96})
        assert gallery[3].pk not in result_ids(response)
        assert len(result_ids(response)) == 5

    def test_an_image_indexed_after_the_snapshot_is_found(self, client, gallery):
        services.index_sync()
        late = store_indexed(images.jpeg(42), "late.jpg")
        response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(42))})
        assert result_ids(response)[0] == late.pk


class TestFindSimilar:
    def test_it_ranks_the_gallery_by_the_stored_vector_and_leaves_out_the_image_itself(self, client, gallery):
        response = client.get(reverse("search:similar", args=[gallery[0].pk]), {"k": 12})
        assert response.status_code == 200
        assert sorted(result_ids(response)) == sorted(i.pk for i in gallery[1:])
        scores = [r.score for r in response.context["results"]]
        assert scores == sorted(scores, reverse=True)

    def test_it_embeds_nothing_and_says_so_in_its_timing(self, client, gallery):
        timing = server_timing(client.get(reverse("search:similar", args=[gallery[0].pk])))
        assert timing["embed"] == 0 and timing["index"] > 0

    def test_each_result_links_to_its_own_similar_page(self, client, gallery):
        body = client.get(reverse("search:similar", args=[gallery[0].pk])).content.decode()
        assert reverse("search:similar", args=[gallery[1].pk]) in body

    def test_an_unknown_image_is_not_found(self, client, db):
        assert client.get(reverse("search:similar", args=[12345])).status_code == 404

    def test_an_image_not_yet_indexed_says_so(self, alice_client, user):
        queued = store(images.jpeg(1), owner=user)
        response = alice_client.get(reverse("search:similar", args=[queued.pk]))
        assert response.status_code == 409
        assert "not indexed yet (queued)" in response.content.decode()


def test_vectors_of_another_model_stop_search_with_the_fix(client, gallery):
    from search.models import Embedding

    Embedding.objects.filter(image=gallery[0]).update(backbone_version="an-older-recipe")
    response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1))})
    assert response.status_code == 503
    assert "rebuild_index --reembed" in response.context["error"]
