"""Search by picture: candidates from the index, re-ranked by their stored feature maps."""
import io

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps

from core import rerank
from search import generations, runtime, selectors
from search.models import Embedding
from search.selectors import SearchUnavailable, _with_matches, similar_to_pictures, similar_to_vectors
from tests import images
from tests.conftest import store_indexed
from tests.core.test_query_views import pasted, screenshot


def test_a_candidate_whose_stored_map_has_another_shape_keeps_its_cosine(db, clean_index):
    query_bytes = images.jpeg(1)
    query = store_indexed(query_bytes, "query.jpg")
    others = [store_indexed(images.jpeg(seed), f"other-{seed}.jpg") for seed in (2, 3)]
    vector_of = {e.image_id: e.as_array() for e in Embedding.objects.all()}
    closer, farther = sorted(others, key=lambda image: -float(vector_of[image.pk] @ vector_of[query.pk]))
    query_map = Embedding.objects.get(image=query).local_features
    # As an earlier recipe could have left it: a map with one position more, which read with
    # today's width would hold every position of the query's own map.
    Embedding.objects.filter(image=farther).update(local_features=bytes(query_map) + bytes(112 * 2))
    Embedding.objects.filter(image=closer).update(local_features=b"")

    [results] = similar_to_pictures([PILImage.open(io.BytesIO(query_bytes))], k=3)

    # Read as if it fitted, the odd map would have matched the query everywhere and put the
    # farther image second.
    assert [r.image.pk for r in results] == [query.pk, closer.pk, farther.pk]


def test_a_framed_query_is_re_ranked_with_the_framing_that_found_the_closest_image(db, clean_index, monkeypatch):
    cats = [store_indexed(images.bench_image("cat", n).read_bytes(), f"cat-{n}.jpg") for n in range(1, 5)]
    inner = PILImage.open(images.bench_image("cat", 2)).convert("RGB")
    framed = ImageOps.expand(inner, border=int(0.3 * max(inner.size)), fill=(230, 40, 40))
    seen, real_rerank = [], rerank.rerank

    def recording(candidates, *, query_views, local_of):
        seen.append(query_views)
        return real_rerank(candidates, query_views=query_views, local_of=local_of)

    monkeypatch.setattr(rerank, "rerank", recording)
    [results] = similar_to_pictures([framed], k=3)

    assert results[0].image == cats[1]
    embedder = runtime.embedder_for("efficientnet_lite0")
    expected = embedder.describe([inner, ImageOps.mirror(inner)]).local
    [views] = seen
    assert len(views) == 2
    for view, local in zip(views, expected, strict=True):
        assert np.allclose(view, rerank.local_descriptors(local, signed=True), atol=0.01)


def test_search_stops_for_images_whose_only_vectors_are_of_another_model_whatever_else_is_stored(db, clean_index):
    stored = [store_indexed(images.jpeg(seed), f"{seed}.jpg") for seed in range(3)]
    active = generations.active()
    # The generation replaced by the last reindex is still being purged...
    generations.activate(generations.Generation(name=f"{active.name}-g7", backbone=active.backbone, m=active.m,
                                                ef_construction=active.ef_construction,
                                                replaced=("alexnet", "replaced")))
    Embedding.objects.filter(image=stored[0]).update(backbone="alexnet", backbone_version="replaced")
    # ... and beside it, an image holds a vector of a model that no generation uses, and none of the one in use.
    Embedding.objects.filter(image=stored[1]).update(backbone_version="an-older-recipe")
    query = Embedding.objects.get(image=stored[2]).as_array()[None, :]
    with pytest.raises(SearchUnavailable, match=r"1 indexed images have no vector of efficientnet_lite0"):
        similar_to_vectors(query, k=3)


def _gallery_of_cats_and_dogs() -> list:
    return [store_indexed(images.bench_image(kind, n).read_bytes(), f"{kind}-{n}.jpg")
            for kind in ("cat", "dog") for n in range(1, 4)]


def test_a_photo_small_inside_a_screenshot_is_found_first(db, clean_index, settings):
    gallery = _gallery_of_cats_and_dogs()
    photo = PILImage.open(images.bench_image("dog", 2)).convert("RGB")
    page = screenshot(photo, at=(520, 300), width=128)  # a tenth of the page's width

    [results] = similar_to_pictures([page], k=3)
    assert results[0].image == gallery[4]

    settings.LOOKALIKE_SEARCH_SECOND_LOOK = False
    [results] = similar_to_pictures([page], k=3)
    assert results[0].image != gallery[4]


def test_a_photo_pasted_onto_a_background_of_another_hue_is_found_first(db, clean_index, settings):
    gallery = _gallery_of_cats_and_dogs()
    photo = PILImage.open(images.bench_image("cat", 1)).convert("RGB")
    page = pasted(photo.resize((150, round(photo.height * 150 / photo.width))), at=(300, 150))

    [results] = similar_to_pictures([page], k=3)
    assert results[0].image == gallery[0]

    settings.LOOKALIKE_SEARCH_SECOND_LOOK = False
    [results] = similar_to_pictures([page], k=3)
    assert results[0].image != gallery[0]


def test_a_quarter_turned_copy_is_found_first(db, clean_index):
    gallery = _gallery_of_cats_and_dogs()
    photo = PILImage.open(images.bench_image("cat", 3)).convert("RGB")
    for turn in (PILImage.Transpose.ROTATE_90, PILImage.Transpose.ROTATE_270):
        [results] = similar_to_pictures([photo.transpose(turn)], k=3)
        assert results[0].image == gallery[2]


def test_a_second_look_that_found_nothing_closer_by_the_margin_changes_nothing(db, clean_index, settings,
                                                                               monkeypatch):
    gallery = _gallery_of_cats_and_dogs()
    page = screenshot(PILImage.open(images.bench_image("dog", 2)).convert("RGB"), at=(520, 300), width=128)
    [with_second_look] = similar_to_pictures([page], k=3)
    monkeypatch.setattr(selectors, "SECOND_LOOK_MARGIN", 1.0)  # more than any cosine gain
    [short_of_the_margin] = similar_to_pictures([page], k=3)
    settings.LOOKALIKE_SEARCH_SECOND_LOOK = False
    [first_look_only] = similar_to_pictures([page], k=3)

    def ranked(results: list) -> list[tuple[int, float]]:
        return [(r.image.pk, round(r.score, 4)) for r in results]

    assert with_second_look[0].image == gallery[4]
    assert ranked(short_of_the_margin) == ranked(first_look_only) != ranked(with_second_look)


def test_a_result_ranked_above_a_more_alike_one_matches_as_much_as_it():
    ranked = [(1, 0.88), (2, 0.85), (3, 0.86), (4, 0.84), (5, 0.87), (6, 0.80)]
    assert [match for _, _, match in _with_matches(ranked)] == [0.88, 0.87, 0.87, 0.87, 0.87, 0.80]
    assert [score for _, score, _ in _with_matches(ranked)] == [score for _, score in ranked]
    assert _with_matches([(1, 0.9), (2, 0.5)]) == [(1, 0.9, 0.9), (2, 0.5, 0.5)], "in cosine order, the cosine"


def test_a_heavy_crop_is_found_first_in_the_image_it_was_cut_from(db, clean_index, monkeypatch, settings):
    # A photo of a garment and the four that outrank it for this crop of it, searched whole, among
    # the whole benchmark gallery.
    original, *others = [store_indexed(images.bench_image("apparel", n).read_bytes(), f"apparel-{n}.jpg")
                         for n in (213, 409, 893, 210, 251)]
    crop = PILImage.open(images.bench_image("apparel", 213)).convert("RGB").crop((97, 69, 199, 189))

    [results] = similar_to_pictures([crop], k=3)
    assert results[0].image == original

    monkeypatch.setattr(selectors, "CROP_CONTRAST_MIN", 1.0)  # more than any window can stand out
    [results] = similar_to_pictures([crop], k=3)
    assert results[0].image in others

    monkeypatch.undo()
    settings.LOOKALIKE_SEARCH_SECOND_LOOK = False  # the crop check is part of the second look
    [results] = similar_to_pictures([crop], k=3)
    assert results[0].image in others
