"""Who may do what on every HTML view, object ownership, and CSRF on every form."""
import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import Image
from tests import images
from tests.conftest import store_indexed, upload_file

ROLES = ("anonymous", "owner", "other", "staff")


@pytest.fixture
def people(user, other_user, staff_user):
    return {"owner": user, "other": other_user, "staff": staff_user}


@pytest.fixture
def as_role(client, people):
    def sign_in(role: str) -> Client:
        client.logout()
        if role != "anonymous":
            client.force_login(people[role])
        return client
    return sign_in


@pytest.fixture
def pictures(user):
    public = store_indexed(images.jpeg(1), "public.jpg", owner=user)
    hidden = store_indexed(images.jpeg(2), "hidden.jpg", owner=user)
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    hidden.refresh_from_db()
    return {"public": public, "hidden": hidden}


def to_login(response) -> bool:
    return response.status_code == 302 and "/login/" in response["Location"]


# role -> expected status (302 means "sent to sign in")
EVERYONE = dict.fromkeys(ROLES, 200)
SIGNED_IN = {"anonymous": 302, "owner": 200, "other": 200, "staff": 200}
OWNER_OR_STAFF_404 = {"anonymous": 404, "owner": 200, "other": 404, "staff": 200}
ORIGINAL = {"anonymous": 302, "owner": 200, "other": 404, "staff": 200}
ADMIN = {"anonymous": 302, "owner": 302, "other": 302, "staff": 200}


@pytest.mark.parametrize(("name", "url", "expected"), [
    ("gallery", lambda p: reverse("gallery:index"), EVERYONE),
    ("detail", lambda p: reverse("gallery:detail", args=[p["public"].pk]), EVERYONE),
    ("hidden detail", lambda p: reverse("gallery:detail", args=[p["hidden"].pk]), OWNER_OR_STAFF_404),
    ("upload page", lambda p: reverse("gallery:upload"), SIGNED_IN),
    ("states", lambda p: reverse("gallery:states") + f"?ids={p['public'].pk}", EVERYONE),
    ("original", lambda p: reverse("gallery:original", args=[p["public"].pk]), ORIGINAL),
    ("thumbnail", lambda p: p["public"].thumbnail.url, EVERYONE),
    ("display copy", lambda p: p["public"].display.url, EVERYONE),
    ("hidden thumbnail", lambda p: p["hidden"].thumbnail.url, OWNER_OR_STAFF_404),
    ("hidden display copy", lambda p: p["hidden"].display.url, OWNER_OR_STAFF_404),
    ("search page", lambda p: reverse("search:search"), EVERYONE),
    ("similar", lambda p: reverse("search:similar", args=[p["public"].pk]), EVERYONE),
    ("hidden similar", lambda p: reverse("search:similar", args=[p["hidden"].pk]), OWNER_OR_STAFF_404),
    ("admin", lambda p: reverse("admin:index"), ADMIN),
])
def test_each_role_gets_what_it_may_see(as_role, pictures, name, url, expected):
    for role in ROLES:
        response = as_role(role).get(url(pictures))
        assert response.status_code == expected[role], f"{name} as {role}"
        if expected[role] == 302:
            assert to_login(response), f"{name} as {role}"


def test_the_copies_of_an_upload_awaiting_approval_are_served_to_its_owner_and_staff_only(as_role, user):
    waiting = store_indexed(images.jpeg(3), "waiting.jpg", owner=user)
    Image.objects.filter(pk=waiting.pk).update(hidden=True, awaiting_approval=True)
    for url in (waiting.thumbnail.url, waiting.display.url):
        seen = {role: as_role(role).get(url).status_code for role in ROLES}
        assert seen == OWNER_OR_STAFF_404, url


def test_served_files_follow_who_may_see_the_image_in_either_media_storage(as_role, user, media_storage):
    public = store_indexed(images.jpeg(11), "public.jpg", owner=user)
    hidden = store_indexed(images.jpeg(12), "hidden.jpg", owner=user)
    waiting = store_indexed(images.jpeg(13), "waiting.jpg", owner=user)
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    Image.objects.filter(pk=waiting.pk).update(hidden=True, awaiting_approval=True)
    for image, expected in ((public, EVERYONE), (hidden, OWNER_OR_STAFF_404), (waiting, OWNER_OR_STAFF_404)):
        for url in (image.thumbnail.url, image.display.url):
            seen = {role: as_role(role).get(url).status_code for role in ROLES}
            assert seen == expected, f"{image.original_name}: {url}"
        original = {role: as_role(role).get(reverse("gallery:original", args=[image.pk])).status_code
                    for role in ROLES}
        assert original == ORIGINAL, image.original_name


def test_the_state_feed_tells_nobody_else_about_a_hidden_image(as_role, pictures):
    url = reverse("gallery:states") + f"?ids={pictures['hidden'].pk}"
    seen = {role: [row["id"] for row in as_role(role).get(url).json()["images"]] for role in ROLES}
    assert seen == {"anonymous": [], "owner": [pictures["hidden"].pk], "other": [], "staff": [pictures["hidden"].pk]}


@pytest.mark.parametrize(("role", "status", "deleted"), [
    ("anonymous", 302, False), ("other", 403, False), ("owner", 302, True), ("staff", 302, True)])
def test_only_the_owner_or_staff_may_delete_whatever_id_is_guessed(as_role, pictures, role, status, deleted):
    for image in pictures.values():
        response = as_role(role).post(reverse("gallery:delete", args=[image.pk]))
        assert response.status_code == status
        assert Image.objects.filter(pk=image.pk).exists() is not deleted
    assert as_role(role).post(reverse("gallery:delete", args=[99_999])).status_code in (302, 404)


def test_an_anonymous_visitor_may_not_upload(client, db):
    response = client.post(reverse("gallery:upload"), {"files": [upload_file("a.jpg", images.jpeg(1))]})
    assert to_login(response)
    assert not Image.objects.exists()


def test_a_private_gallery_shows_nothing_to_anonymous_visitors(as_role, pictures, settings):
    settings.LOOKALIKE_PUBLIC_GALLERY = False
    urls = [reverse("gallery:index"), reverse("gallery:detail", args=[pictures["public"].pk]),
            reverse("gallery:states") + f"?ids={pictures['public'].pk}", pictures["public"].thumbnail.url,
            reverse("search:search"), reverse("search:similar", args=[pictures["public"].pk])]
    for url in urls:
        assert to_login(as_role("anonymous").get(url)), url
        assert as_role("other").get(url).status_code == 200, url


class TestCsrf:
    @pytest.fixture
    def strict(self, user):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    @staticmethod
    def token(client: Client, page: str) -> str:
        client.get(page)
        return client.cookies["csrftoken"].value

    def test_an_upload_without_the_token_is_refused(self, strict):
        files = [upload_file("a.jpg", images.jpeg(1))]
        assert strict.post(reverse("gallery:upload"), {"files": files}).status_code == 403
        assert not Image.objects.exists()
        token = self.token(strict, reverse("gallery:upload"))
        files = [upload_file("a.jpg", images.jpeg(1))]
        response = strict.post(reverse("gallery:upload"), {"files": files, "csrfmiddlewaretoken": token})
        assert response.status_code == 200
        assert Image.objects.count() == 1

    def test_a_delete_without_the_token_is_refused(self, strict, user):
        image = store_indexed(images.jpeg(3), owner=user)
        assert strict.post(reverse("gallery:delete", args=[image.pk])).status_code == 403
        assert Image.objects.filter(pk=image.pk).exists()
        token = self.token(strict, reverse("gallery:detail", args=[image.pk]))
        assert strict.post(reverse("gallery:delete", args=[image.pk]),
                           {"csrfmiddlewaretoken": token}).status_code == 302
        assert not Image.objects.filter(pk=image.pk).exists()

    def test_a_search_without_the_token_is_refused(self, strict):
        query = {"image": upload_file("q.jpg", images.jpeg(4))}
        assert strict.post(reverse("search:search"), query).status_code == 403

    def test_signing_in_and_out_need_the_token(self, user):
        anonymous = Client(enforce_csrf_checks=True)
        credentials = {"username": "alice", "password": "alice-password"}
        assert anonymous.post(reverse("login"), credentials).status_code == 403
        token = self.token(anonymous, reverse("login"))
        assert anonymous.post(reverse("login"), {**credentials, "csrfmiddlewaretoken": token}).status_code == 302
        assert anonymous.post(reverse("logout")).status_code == 403
        token = self.token(anonymous, reverse("gallery:index"))
        assert anonymous.post(reverse("logout"), {"csrfmiddlewaretoken": token}).status_code == 302
