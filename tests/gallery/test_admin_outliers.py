"""Outlier scores in the admin: staff sort the image list most unusual first, filter it by score ranges
and start the job that scores the gallery; nobody else ever sees a score."""
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from gallery.models import Image, OutlierScore
from jobs.models import Job
from tests.search.test_words import row

CHANGELIST = reverse("admin:gallery_image_changelist")


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))
    return client


def scored(name: str, score: float | None, distance: float = 0.4, **fields) -> Image:
    image = row(name, **fields)
    OutlierScore.objects.create(image=image, distance=distance, score=score, computed_at=timezone.now())
    return image


@pytest.fixture
def gallery(db):
    return [scored("typical.jpg", 12.5, 0.21), scored("odd.png", 99.6, 0.83), scored("rare.jpg", 96.0, 0.55),
            scored("measured.jpg", None), row("unscored.jpg")]


def listed(response) -> list[str]:
    assert response.status_code == 200
    return [image.original_name for image in response.context["cl"].result_list]


def test_most_unusual_first_sorts_by_score_with_unscored_images_last(admin_client, gallery):
    page = admin_client.get(CHANGELIST)
    order = page.context["most_unusual_order"]
    assert f'href="?o={order}"' in page.content.decode()

    names = listed(admin_client.get(CHANGELIST, {"o": order}))

    assert names[:3] == ["odd.png", "rare.jpg", "typical.jpg"]
    assert set(names[3:]) == {"measured.jpg", "unscored.jpg"}
    assert listed(admin_client.get(CHANGELIST, {"o": order.lstrip("-")}))[-3:] == ["typical.jpg", "rare.jpg",
                                                                                   "odd.png"]


def test_the_list_shows_each_score_and_the_image_page_its_distance(admin_client, gallery):
    content = admin_client.get(CHANGELIST).content.decode()
    assert "99.6" in content and "12.5" in content

    page = admin_client.get(reverse("admin:gallery_image_change", args=[gallery[1].pk])).content.decode()
    assert "Outlier score" in page and "99.6" in page and "0.830" in page


@pytest.mark.parametrize(("value", "expected"), [
    ("99", {"odd.png"}), ("95", {"rare.jpg"}), ("80", set()), ("0", {"typical.jpg"}),
    ("none", {"measured.jpg", "unscored.jpg"}),
])
def test_the_filter_picks_a_score_range(admin_client, gallery, value, expected):
    assert set(listed(admin_client.get(CHANGELIST, {"unusual": value}))) == expected


def test_the_button_starts_the_job_for_those_allowed(admin_client, staff_user, client):
    response = admin_client.post(reverse("admin:gallery_image_score_outliers"))

    assert response.status_code == 302
    assert Job.objects.filter(kind=Job.Kind.OUTLIER_SCORES).count() == 1
    client.force_login(staff_user)  # staff, without the permission to start jobs
    assert client.post(reverse("admin:gallery_image_score_outliers")).status_code == 403
    assert admin_client.get(reverse("admin:gallery_image_score_outliers")).status_code == 403
    assert Job.objects.filter(kind=Job.Kind.OUTLIER_SCORES).count() == 1


def test_the_moderation_queue_says_which_uploads_it_holds(admin_client, db, settings):
    settings.LOOKALIKE_MODERATION_OUTLIER_SCORE = 98.0
    held = scored("held.png", 99.6, hidden=True)
    Image.objects.filter(pk=held.pk).update(awaiting_approval=True)

    page = admin_client.get(reverse("admin:gallery_imageawaitingapproval_changelist"))

    assert listed(page) == [held.original_name]
    assert "uploads scored 98 or more as outliers are held" in page.content.decode()


def test_nobody_but_staff_sees_a_score(client, user, gallery):
    owned = scored("mine.png", 97.3, 0.777, owner=user)
    client.force_login(user)

    assert client.get(CHANGELIST).status_code == 302  # to the admin's sign-in page
    for url in (f"/images/{owned.pk}/", f"/api/v1/images/{owned.pk}", f"/images/states/?ids={owned.pk}", "/"):
        response = client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode().lower()
        assert "97.3" not in content and "0.777" not in content and "outlier" not in content, url
