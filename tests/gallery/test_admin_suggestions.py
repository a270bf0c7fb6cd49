"""Curators and tag suggestions in the admin: find images that have some, accept or reject them in bulk
or one by one, and start a job that makes them."""
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from gallery.models import Image, Tag, TagSuggestion
from jobs.models import Job
from tests.search.test_words import row

CHANGELIST = reverse("admin:gallery_image_changelist")


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))
    return client


def suggest(image: Image, name: str, confidence: float = 0.9) -> TagSuggestion:
    return TagSuggestion.objects.create(image=image, tag=Tag.objects.get_or_create(name=name)[0],
                                        confidence=confidence, source=TagSuggestion.Source.NEIGHBOURS)


@pytest.fixture
def suggested(db):
    first, second, plain = row("first.jpg"), row("second.jpg"), row("plain.jpg")
    suggest(first, "cat", 0.92)
    suggest(second, "dog", 0.81)
    # Already a tag of its image: nothing left to decide.
    plain.tags.add(Tag.objects.get_or_create(name="cat")[0])
    suggest(plain, "cat")
    return first, second, plain


def listed(response) -> set[str]:
    return {image.original_name for image in response.context["cl"].result_list}


def test_the_list_filters_images_that_have_open_suggestions_and_shows_them(admin_client, suggested):
    response = admin_client.get(CHANGELIST, {"suggestions": "yes"})

    assert listed(response) == {"first.jpg", "second.jpg"}
    assert "cat (92%)" in response.content.decode()
    assert listed(admin_client.get(CHANGELIST, {"suggestions": "no"})) == {"plain.jpg"}


def test_bulk_accept_makes_tags_and_bulk_reject_remembers(admin_client, suggested):
    first, second, _ = suggested

    admin_client.post(CHANGELIST, {"action": "accept_suggestions", "_selected_action": [first.pk]})
    admin_client.post(CHANGELIST, {"action": "reject_suggestions", "_selected_action": [second.pk]})

    assert [t.name for t in first.tags.all()] == ["cat"]
    assert not TagSuggestion.objects.filter(image=first).exists()
    assert TagSuggestion.objects.get(image=second).rejected
    assert not second.tags.exists()


def test_the_image_page_decides_one_suggestion_at_a_time(admin_client, suggested):
    first, _, _ = suggested
    suggest(first, "pet", 0.6)
    url = reverse("admin:gallery_image_suggestions", args=[first.pk])
    page = admin_client.get(url).content.decode()
    assert "cat" in page and "pet" in page
    pet = TagSuggestion.objects.get(image=first, tag__name="pet")

    admin_client.post(url, {"suggestion": pet.pk, "decision": "reject"})
    admin_client.post(url, {"suggestion": TagSuggestion.objects.get(image=first, tag__name="cat").pk,
                            "decision": "accept"})

    assert [t.name for t in first.tags.all()] == ["cat"]
    assert "Rejected (never suggested again)" in admin_client.get(url).content.decode()
    assert TagSuggestion.objects.get(image=first, tag__name="pet").rejected


def test_a_curator_who_may_only_view_cannot_decide(client, suggested):
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_image"))
    client.force_login(viewer)
    first, _, _ = suggested
    url = reverse("admin:gallery_image_suggestions", args=[first.pk])

    assert client.get(url).status_code == 200
    assert client.post(url, {"suggestion": first.tag_suggestions.get().pk, "decision": "accept"}).status_code == 403
    assert not first.tags.exists()
    assert client.post(reverse("admin:gallery_image_suggest_tags")).status_code == 403


def test_the_suggest_tags_button_starts_a_job(admin_client, db):
    response = admin_client.post(reverse("admin:gallery_image_suggest_tags"), follow=True)

    assert Job.objects.filter(kind=Job.Kind.TAG_SUGGESTIONS).count() == 1
    assert "Started Tag suggestions" in response.content.decode()
    assert "Suggest tags" in admin_client.get(CHANGELIST).content.decode()
