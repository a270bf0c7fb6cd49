"""Recommendations: "You may also like" on an image page and "More like your uploads": similar, never
copies, varied, and only what the viewer may see."""
import numpy as np
import pytest

from core.mmr import mmr
from gallery.models import Image
from search import recommendations
from tests import images
from tests.conftest import store_indexed


def test_mmr_keeps_the_closest_first_and_skips_a_near_twin_of_a_pick():
    a = np.array([1.0, 0.0, 0.0])
    twin = np.array([0.999, 0.0447, 0.0])
    other = np.array([0.6, 0.8, 0.0])
    vectors = np.stack([a, twin / np.linalg.norm(twin), other]).astype(np.float32)

    assert mmr(np.array([0.9, 0.89, 0.8], dtype=np.float32), vectors, 2) == [0, 2]
    assert mmr(np.array([0.9, 0.89, 0.8], dtype=np.float32), vectors, 2, weight=1.0) == [0, 1]
    assert mmr(np.zeros(0, dtype=np.float32), np.zeros((0, 3), dtype=np.float32), 5) == []
    with pytest.raises(ValueError, match="relevance"):
        mmr(np.zeros(2), vectors, 2)


def bench(category: str, number: int, owner=None) -> Image:
    return store_indexed(images.bench_image(category, number).read_bytes(), f"{category}-{number}.jpg", owner)


def shown(picked) -> set[str]:
    return {r.image.original_name for r in picked}


@pytest.fixture
def cats(db, clean_index):
    return [bench("cat", n) for n in range(1, 8)]


def test_an_image_page_recommends_similar_images_but_not_its_copies(cats, user, other_user):
    # Alice's hidden picture: Bob, who may not see it, can store the same file as his own.
    source = bench("cat", 40, owner=user)
    Image.objects.filter(pk=source.pk).update(hidden=True)
    store_indexed(images.bench_image("cat", 40).read_bytes(), "same-file.jpg", owner=other_user)
    store_indexed(images.bench_crop("cat", 40, margin=25, quality=80), "edited-copy.jpg")
    dog = bench("dog", 1)

    picked = recommendations.recommendations_for_image(image=source, user=user, k=6)

    names = shown(picked)
    assert len(picked) == 6
    assert "same-file.jpg" not in names and "edited-copy.jpg" not in names and source.original_name not in names
    assert names <= {c.original_name for c in cats} | {dog.original_name}
    assert picked[0].score == max(r.score for r in picked)


def test_hidden_and_other_users_private_images_are_never_recommended(cats, user, other_user):
    hidden = bench("cat", 20)
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    private = bench("cat", 21, owner=other_user)
    Image.objects.filter(pk=private.pk).update(hidden=True)

    for viewer in (user, other_user):
        names = shown(recommendations.recommendations_for_image(image=cats[0], user=viewer, k=20))
        assert "cat-20.jpg" not in names
        assert "cat-21.jpg" not in names


def test_more_like_your_uploads_never_shows_your_own_images(cats, user):
    mine = [bench("cat", n, owner=user) for n in (30, 31)]

    names = shown(recommendations.recommendations_for_user(user=user))

    assert names and not names & {m.original_name for m in mine}
    assert names <= {c.original_name for c in cats}


def test_the_pages_show_recommendations(cats, client, user):
    bench("cat", 30, owner=user)
    client.force_login(user)

    detail = client.get(f"/images/{cats[0].pk}/").content.decode()
    gallery = client.get("/").content.decode()

    assert "You may also like" in detail and "cat-2.jpg" in detail
    assert "More like your uploads" in gallery
    client.logout()
    assert "More like your uploads" not in client.get("/").content.decode()


def test_the_api_answers_recommendations_and_hides_what_it_must(cats, client, user):
    answer = client.get(f"/api/v1/images/{cats[0].pk}/recommendations")
    assert answer.status_code == 200
    assert {r["id"] for r in answer.json()["results"]} <= {c.pk for c in cats[1:]}
    Image.objects.filter(pk=cats[0].pk).update(hidden=True)
    assert client.get(f"/api/v1/images/{cats[0].pk}/recommendations").status_code == 404
    assert client.get("/api/v1/recommendations").status_code == 401
    client.force_login(user)
    assert client.get("/api/v1/recommendations").json() == {"results": []}
