"""Search by words: the tags of images, manual and accepted, found by a text box and the API's `q`."""
import json

import pytest

from gallery.models import Image, Tag
from tests import images
from tests.conftest import store_indexed

SEARCH = "/api/v1/search"


def row(name: str, *tags: str, owner=None, hidden: bool = False, state: str = Image.State.INDEXED) -> Image:
    """An image row without files: search by words reads only rows and tags."""
    image = Image.objects.create(owner=owner, original_name=name, sha256=name.ljust(64, "0"), format="JPEG", width=8,
                                 height=8, byte_size=1, original=f"originals/{name}", display=f"display/{name}",
                                 thumbnail=f"thumbs/{name}", state=state, hidden=hidden)
    image.tags.add(*[Tag.objects.get_or_create(name=tag)[0] for tag in tags])
    return image


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [result["id"] for result in response.json()["results"]]


@pytest.fixture
def tagged(db, user):
    return {
        "cat": row("cat.jpg", "cat"),
        "big": row("lion.jpg", "big cat", "savanna"),
        "dress": row("dress.jpg", "dress", "red"),
        "red_cat": row("red-cat.jpg", "cat", "red"),
        "hidden": row("hidden-cat.jpg", "cat", hidden=True),
        "queued": row("queued-cat.jpg", "cat", state=Image.State.QUEUED, owner=user),
    }


def test_q_alone_finds_images_tagged_with_every_word_newest_first(client, tagged):
    response = client.post(SEARCH, json.dumps({"q": "Cat red"}), content_type="application/json")

    assert ids(response) == [tagged["red_cat"].pk]
    assert response.json()["results"][0]["verdict"] == "tagged"


def test_a_word_finds_tags_that_hold_it_and_a_plural_finds_the_singular(client, tagged):
    found = ids(client.post(SEARCH, {"q": "cats"}))

    assert found == [tagged["red_cat"].pk, tagged["big"].pk, tagged["cat"].pk]


def test_hidden_images_and_uploads_in_progress_are_never_found_by_words(client, tagged, user):
    client.force_login(user)

    found = ids(client.post(SEARCH, {"q": "cat"}))

    assert tagged["hidden"].pk not in found and tagged["queued"].pk not in found


def test_words_page_through_results_and_refuse_too_many_words(client, tagged):
    first = client.post(SEARCH, {"q": "cat", "k": "2"}).json()
    second = client.post(SEARCH, {"q": "cat", "k": "2", "offset": "2"}).json()

    assert first["has_more"] and not second["has_more"]
    assert len({r["id"] for r in first["results"] + second["results"]}) == 3
    refused = client.post(SEARCH, {"q": " ".join(f"w{i}" for i in range(11))})
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_parameter"


def test_words_filter_a_search_with_a_picture(client, db, clean_index):
    dog = store_indexed(images.jpeg(1), "dog.jpg")
    other = store_indexed(images.jpeg(2), "other.jpg")
    dog.tags.add(Tag.objects.create(name="dog"))

    found = ids(client.post(SEARCH, {"image_id": str(other.pk), "q": "dog"}))

    assert found == [dog.pk]


def test_the_search_page_has_a_words_box_and_lists_what_it_finds(client, tagged):
    page = client.get("/search/")
    assert b'name="q"' in page.content

    response = client.get("/search/", {"q": "dress"})

    assert response.status_code == 200
    assert b"dress.jpg" in response.content and b"cat.jpg" not in response.content
    assert b"Tagged with dress" in response.content
    empty = client.get("/search/", {"q": "zebra"})
    assert b"No image is tagged with zebra" in empty.content


def test_a_search_with_neither_picture_nor_words_says_so(client, db):
    response = client.post(SEARCH, {})

    assert response.status_code == 400
    assert 'words in "q"' in response.json()["message"]
