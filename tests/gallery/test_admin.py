"""The admin as curators use it: the image list, bulk actions and their effect on search, moderation."""
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gallery.models import Image, Tag
from search import index_writer, selectors, services
from search.models import Embedding, IndexChange
from tests import images
from tests.conftest import store, store_indexed, upload_file

CHANGELIST = reverse("admin:gallery_image_changelist")


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))
    return client


@pytest.fixture
def gallery(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(4)]
    index_writer.index_sync()
    return stored


def found(image: Image) -> list[int]:
    """What searching with the image's own vector returns (the image itself included, when visible)."""
    vector = Embedding.objects.get(image=image).as_array()
    return [s.image.pk for s in selectors.similar_to_vectors(vector[None, :], k=10)[0]]


def act(client, action: str, images_: list[Image], **extra: str):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [i.pk for i in images_], **extra},
                       follow=True)


def make_rows(count: int, owner) -> None:
    """Image rows without files: the list only shows their data and thumbnail URLs."""
    tag = Tag.objects.create(name=f"batch-{count}")
    rows = Image.objects.bulk_create([
        Image(owner=owner, original_name=f"row-{count}-{i}.jpg", sha256=f"{count:08d}{i:056d}", format="JPEG",
              width=640, height=480, byte_size=1000 + i, original=f"originals/{i}.jpg", display=f"display/{i}.jpg",
              thumbnail=f"thumbs/{count}-{i}.jpg", state=Image.State.INDEXED)
        for i in range(count)])
    Image.tags.through.objects.bulk_create([Image.tags.through(image_id=row.pk, tag_id=tag.pk) for row in rows])


class TestImageList:
    def test_a_page_of_100_images_takes_a_handful_of_queries_whatever_the_page_size(self, admin_client, user):
        make_rows(5, user)
        with CaptureQueriesContext(connection) as few:
            assert admin_client.get(CHANGELIST).status_code == 200
        make_rows(150, user)
        with CaptureQueriesContext(connection) as many:
            response = admin_client.get(CHANGELIST)
        assert response.context["cl"].result_list.__len__() == 100
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
        assert len(many) <= 12, [q["sql"] for q in many.captured_queries]

    def test_it_shows_state_uploader_size_dimensions_and_tags(self, admin_client, user):
        make_rows(1, user)
        Image.objects.update(hidden=True, byte_size=2_500_000)
        page = admin_client.get(CHANGELIST).content.decode()
        for shown in ("Indexed, hidden", "alice", "2.4\xa0MB", "640 × 480", "batch-1", "thumbs/1-0.jpg"):
            assert shown in page

    @pytest.mark.parametrize(("query", "expected"), [
        ({"q": "row-3-1"}, ["row-3-1.jpg"]),
        ({"q": "batch-2"}, ["row-2-0.jpg", "row-2-1.jpg"]),
        ({"status": "hidden"}, ["row-3-2.jpg"]),
        ({"size": "large"}, ["row-3-2.jpg"]),
    ])
    def test_it_searches_and_filters(self, admin_client, user, query, expected):
        make_rows(2, user)
        make_rows(3, user)
        Image.objects.filter(original_name="row-3-2.jpg").update(hidden=True, byte_size=5_000_000)
        response = admin_client.get(CHANGELIST, query)
        assert sorted(i.original_name for i in response.context["cl"].result_list) == expected

    def test_searching_by_uploader(self, admin_client, user, other_user):
        make_rows(2, other_user)
        response = admin_client.get(CHANGELIST, {"q": "bob"})
        assert len(response.context["cl"].result_list) == 2


class TestBulkActions:
    def test_hiding_takes_images_out_of_search_and_the_gallery_and_unhiding_brings_them_back(
            self, admin_client, gallery):
        target = gallery[1]
        act(admin_client, "hide", [target])
        assert target.pk not in found(gallery[0]) and target.pk not in found(target)
        assert "picture-1.jpg" not in Client().get(reverse("gallery:index")).content.decode()
        act(admin_client, "unhide", [target])
        assert found(target)[0] == target.pk

    def test_deleting_removes_images_from_search_at_once(self, admin_client, gallery):
        doomed = gallery[2]
        vector = Embedding.objects.get(image=doomed).as_array()
        response = act(admin_client, "delete_with_index", [doomed, gallery[3]])
        assert "Deleted 2 images." in response.content.decode()
        assert not Image.objects.filter(pk__in=[doomed.pk, gallery[3].pk]).exists()
        assert set(IndexChange.objects.filter(kind="remove").values_list("image_id", flat=True)) == {
            doomed.pk, gallery[3].pk}
        shown = [s.image.pk for s in selectors.similar_to_vectors(vector[None, :], k=10)[0]]
        assert shown == [gallery[0].pk, gallery[1].pk] or set(shown) == {gallery[0].pk, gallery[1].pk}

    def test_adding_and_removing_tags(self, admin_client, gallery):
        act(admin_client, "add_tags", gallery[:2], tags="Cats,  holiday , cats")
        assert sorted(gallery[0].tags.values_list("name", flat=True)) == ["cats", "holiday"]
        assert gallery[2].tags.count() == 0
        act(admin_client, "remove_tags", gallery[:2], tags="holiday")
        assert list(gallery[1].tags.values_list("name", flat=True)) == ["cats"]

    def test_a_tag_action_without_tags_says_what_to_type(self, admin_client, gallery):
        response = act(admin_client, "add_tags", gallery[:1], tags=" , ")
        assert "Name at least one tag" in response.content.decode()
        assert not Tag.objects.exists()

    def test_embed_again_queues_the_images_with_a_task_per_batch(self, admin_client, gallery, settings,
                                                                 embedding_messages,
                                                                 django_capture_on_commit_callbacks):
        settings.LOOKALIKE_EMBED_BATCH_SIZE = 2
        with django_capture_on_commit_callbacks(execute=True):
            act(admin_client, "reembed", gallery[:3])
        [(task, (first_ids,))] = embedding_messages
        assert task == "search.send_embedding_batches"
        assert len(first_ids) == 2 and set(first_ids) < {g.pk for g in gallery[:3]}
        assert set(Image.objects.filter(pk__in=[g.pk for g in gallery[:3]]).values_list("state", flat=True)) == {
            Image.State.QUEUED}

    def test_retry_queues_failed_images_only(self, admin_client, gallery):
        Image.objects.filter(pk=gallery[0].pk).update(state=Image.State.FAILED, error="broken", attempts=3)
        response = act(admin_client, "retry_failed", gallery[:2])
        assert "Queued 1 failed images again." in response.content.decode()
        gallery[0].refresh_from_db()
        assert (gallery[0].state, gallery[0].attempts) == (Image.State.QUEUED, 0)

    def test_the_stock_delete_that_would_skip_the_index_is_not_offered(self, admin_client, gallery):
        actions = dict(admin_client.get(CHANGELIST).context["action_form"].fields["action"].choices)
        assert "delete_selected" not in actions and "delete_with_index" in actions


class TestImageDetail:
    def test_it_shows_the_image_its_embedding_and_its_neighbours_as_links(self, admin_client, gallery):
        page = admin_client.get(reverse("admin:gallery_image_change", args=[gallery[0].pk])).content.decode()
        assert gallery[0].display.url in page
        assert "Indexed; 1 attempts; vectors: efficientnet_lite0" in page
        for other in gallery[1:]:
            assert reverse("admin:gallery_image_change", args=[other.pk]) in page
        assert page.count(" · 0.") + page.count(" · 1.") == 3


class TestModeration:
    def test_with_moderation_on_uploads_wait_hidden_until_approved(self, admin_client, settings, user, gallery):
        settings.LOOKALIKE_MODERATION = True
        client = Client()
        client.force_login(user)
        reply = client.post(reverse("gallery:upload"), {"files": [upload_file("new.jpg", images.jpeg(40))]},
                            HTTP_ACCEPT="application/json").json()
        image = Image.objects.get(pk=reply["results"][0]["image"]["id"])
        assert (image.hidden, image.awaiting_approval) == (True, True)
        services.image_embed(image_id=image.pk, claim_token="moderated")
        assert image.pk not in found(image)
        queue = admin_client.get(reverse("admin:gallery_imageawaitingapproval_changelist"))
        assert [i.pk for i in queue.context["cl"].result_list] == [image.pk]
        assert "moderation is on" in queue.content.decode()
        act(admin_client, "approve", [image])
        image.refresh_from_db()
        assert (image.hidden, image.awaiting_approval) == (False, False)
        assert found(image)[0] == image.pk
        assert not admin_client.get(reverse("admin:gallery_imageawaitingapproval_changelist")).context[
            "cl"].result_list

    def test_with_moderation_off_uploads_appear_at_once(self, db, settings):
        image = store(images.jpeg(41), "open.jpg")
        assert (image.hidden, image.awaiting_approval) == (False, False)
