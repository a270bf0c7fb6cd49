"""Copies noticed at upload: an upload that is an edited copy of an image in the gallery is marked as
such when it is embedded, the uploader is told if they may see that image, and curators review the pair."""
import io

import pytest
from django.contrib.auth import get_user_model
from PIL import Image as PILImage

from gallery.models import CopyNotice, DuplicateGroup, Image
from search import copy_notices, duplicates
from tests import images
from tests.conftest import store_indexed


def states(client, image: Image) -> dict:
    [state] = client.get("/images/states/", {"ids": str(image.pk)}).json()["images"]
    return state


@pytest.fixture
def original(db, clean_index, other_user):
    for n in (1, 2, 3):
        store_indexed(images.bench_image("dog", n).read_bytes(), f"dog-{n}.jpg")
    return store_indexed(images.bench_image("cat", 40).read_bytes(), "bobs-cat.jpg", owner=other_user)


def test_an_edited_copy_is_noticed_when_embedded_and_the_uploader_told(original, alice_client, user):
    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    notice = CopyNotice.objects.get(image=copy)
    assert notice.original == original and notice.similarity >= 0.94
    assert states(alice_client, copy)["copy_of"] == {"id": original.pk, "url": f"/images/{original.pk}/"}
    _, groups = duplicates.duplicate_groups_latest()
    assert [group.image_ids for group in groups] == [[original.pk, copy.pk]]


def test_the_uploader_is_not_told_of_an_image_they_may_not_see(original, alice_client, user):
    Image.objects.filter(pk=original.pk).update(hidden=True)

    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    assert CopyNotice.objects.filter(image=copy, original=original).exists()  # for curators
    assert states(alice_client, copy)["copy_of"] is None


def test_an_unrelated_upload_is_not_a_copy(original, alice_client, user):
    other = store_indexed(images.bench_image("squirrel", 3).read_bytes(), "squirrel.jpg", owner=user)

    assert not CopyNotice.objects.filter(image=other).exists()
    assert states(alice_client, other)["copy_of"] is None
    assert not DuplicateGroup.objects.exists()


def test_the_near_duplicates_page_lists_the_pair_noticed_at_upload(original, client, user):
    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))

    page = client.get("/admin/gallery/image/duplicates/").content.decode()

    assert "Noticed at upload" in page
    assert f"#{original.pk} bobs-cat.jpg" in page and f"#{copy.pk} my-copy.jpg" in page


def test_a_failed_lookup_never_costs_the_upload(original, user, monkeypatch):
    def broken(**kwargs):
        raise OSError("the snapshot could not be read")

    monkeypatch.setattr(copy_notices, "copies_find", broken)

    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    assert copy.state == Image.State.INDEXED
    assert not CopyNotice.objects.filter(image=copy).exists()


def test_an_original_deleted_between_the_lookup_and_the_indexing_leaves_no_notice(original, user, monkeypatch):
    from gallery.services import image_delete

    real_find = copy_notices.copies_find

    def find_then_delete(**kwargs):
        found = real_find(**kwargs)
        image_delete(image=Image.objects.get(pk=original.pk))
        return found

    monkeypatch.setattr(copy_notices, "copies_find", find_then_delete)

    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    assert copy.state == Image.State.INDEXED
    assert not CopyNotice.objects.exists()
    assert not DuplicateGroup.objects.exists()


def failed_twin_of_the_original() -> None:
    """The original saved again, nearer to its copy than the original is, but not indexed (failed)."""
    again = io.BytesIO()
    PILImage.open(images.bench_image("cat", 40)).save(again, "JPEG", quality=97)
    twin = store_indexed(again.getvalue(), "twin.jpg")
    Image.objects.filter(pk=twin.pk).update(state=Image.State.FAILED)


def test_an_image_not_indexed_is_passed_over_for_the_nearest_indexed_one(original, user):
    failed_twin_of_the_original()

    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    assert CopyNotice.objects.get(image=copy).original == original


def test_when_all_the_nearest_checked_at_once_are_not_indexed_it_looks_further(original, user, monkeypatch):
    monkeypatch.setattr(copy_notices, "_NEAREST", 1)
    failed_twin_of_the_original()

    copy = store_indexed(images.bench_crop("cat", 40), "my-copy.jpg", owner=user)

    assert CopyNotice.objects.get(image=copy).original == original
