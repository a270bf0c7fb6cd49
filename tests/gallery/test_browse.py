"""The Browse page and a cluster's page: only what the viewer may see, in the counts, the thumbnails and the
pages."""
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from gallery import views
from gallery.models import Cluster, Clustering, Image
from jobs.models import Job
from search import runtime
from tests.search.test_clusters import blob_vectors, gallery_of, run_job


def two_groups(settings, user, other_user) -> dict:
    """Two groups: one of five public images and Bob's hidden one, one of Bob's hidden images only."""
    settings.LOOKALIKE_CLUSTER_COUNT = 2
    identity = runtime.index_identity()
    first, second = blob_vectors(1, 6, identity.dim, seed=1), blob_vectors(1, 3, identity.dim, seed=2)
    public = gallery_of(first[:5], identity, "public", owner=user)
    secret = gallery_of(first[5:], identity, "secret", owner=other_user, hidden=True)
    private = gallery_of(second, identity, "private", owner=other_user, hidden=True)
    run_job()
    return {"public": public, "secret": secret[0], "private": private,
            "big": Cluster.objects.get(number=1), "small": Cluster.objects.get(number=2)}


@pytest.fixture
def grouped(db, settings, user, other_user):
    return two_groups(settings, user, other_user)


def cards(response) -> dict[int, str]:
    """The cluster cards of a Browse page, by cluster id: each card's HTML."""
    assert response.status_code == 200
    html = response.content.decode()
    found = {}
    for part in html.split('class="cluster-card"')[1:]:
        cluster_id = int(part.split('data-cluster="')[1].split('"')[0])
        found[cluster_id] = part.split("</a>")[0]
    return found


def test_it_shows_each_cluster_with_the_count_and_most_typical_thumbnails_a_visitor_may_see(client, grouped):
    shown = cards(client.get(reverse("gallery:browse")))

    assert list(shown) == [grouped["big"].pk]
    card = shown[grouped["big"].pk]
    assert "5 images" in card and "Group 1" in card
    assert card.count("<img") == 4
    assert grouped["secret"].thumbnail_url not in card
    assert all(image.thumbnail_url not in client.get(reverse("gallery:browse")).content.decode()
               for image in grouped["private"])


def test_a_cluster_of_only_images_the_viewer_may_not_see_is_not_found(client, alice_client, grouped):
    url = reverse("gallery:browse_cluster", args=[grouped["small"].pk])

    assert client.get(url).status_code == 404
    assert alice_client.get(url).status_code == 404


def test_the_owner_and_staff_see_the_owner_s_hidden_images_in_their_clusters(client, grouped, other_user,
                                                                             staff_user):
    client.force_login(other_user)
    shown = cards(client.get(reverse("gallery:browse")))
    # The five public images and his own hidden one.
    assert "6 images" in shown[grouped["big"].pk] and "3 images" in shown[grouped["small"].pk]

    client.force_login(staff_user)
    shown = cards(client.get(reverse("gallery:browse")))
    assert "6 images" in shown[grouped["big"].pk] and "3 images" in shown[grouped["small"].pk]
    response = client.get(reverse("gallery:browse_cluster", args=[grouped["small"].pk]))
    assert response.status_code == 200
    assert {image.pk for image in response.context["page"].object_list} == {image.pk for image in grouped["private"]}


def test_a_cluster_s_page_lists_what_the_viewer_may_see_most_typical_first_a_page_at_a_time(client, grouped,
                                                                                            monkeypatch):
    monkeypatch.setattr(views, "GALLERY_PAGE_SIZE", 3)
    url = reverse("gallery:browse_cluster", args=[grouped["big"].pk])

    first, second = client.get(url), client.get(url, {"page": 2})

    listed = [image.pk for image in first.context["page"].object_list] + \
        [image.pk for image in second.context["page"].object_list]
    assert sorted(listed) == sorted(image.pk for image in grouped["public"])
    assert "Page 1 of 2" in first.content.decode() and "5 images" in first.content.decode()
    similarities = [image.cluster_memberships.get().similarity for image in Image.objects.filter(pk__in=listed)]
    assert sorted(similarities, reverse=True) == [
        Image.objects.get(pk=i).cluster_memberships.get().similarity for i in listed]
    assert grouped["secret"].original_name not in first.content.decode() + second.content.decode()


def test_before_any_grouping_the_page_says_so_and_an_old_cluster_is_gone(client, db, grouped):
    assert 'href="/browse/"' in client.get(reverse("gallery:index")).content.decode()
    old = grouped["big"].pk
    run_job()
    assert client.get(reverse("gallery:browse_cluster", args=[old])).status_code == 404

    Clustering.objects.all().delete()
    assert "has not been grouped yet" in client.get(reverse("gallery:browse")).content.decode()


def test_browsing_a_private_gallery_needs_signing_in(client, grouped, settings):
    settings.LOOKALIKE_PUBLIC_GALLERY = False

    assert client.get(reverse("gallery:browse")).status_code == 302
    assert client.get(reverse("gallery:browse_cluster", args=[grouped["big"].pk])).status_code == 302


def test_the_admin_button_starts_one_grouping_job_for_those_allowed(client, db, staff_user):
    admin = get_user_model().objects.create_superuser("root", password="root-password")
    client.force_login(admin)
    url = reverse("admin:gallery_image_group_by_look")
    assert 'action="/admin/gallery/image/group-by-look/"' in client.get(
        reverse("admin:gallery_image_changelist")).content.decode()

    assert client.post(url).status_code == 302
    assert client.post(url).status_code == 302
    assert Job.objects.filter(kind=Job.Kind.CLUSTERS).count() == 1
    client.force_login(staff_user)  # staff, without the permission to start jobs
    assert client.post(url).status_code == 403
