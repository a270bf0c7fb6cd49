import hashlib
import re

from django.test import Client
from django.urls import reverse

from api.models import ApiToken
from api.services import api_token_create
from tests.api.conftest import bearer


def secret_on(body: str) -> str:
    match = re.search(r'id="new-token-secret"[^>]*value="([^"]+)"', body)
    assert match, "the new secret is shown"
    return match.group(1)


def test_signed_in_users_find_their_account_page_in_the_top_bar(alice_client):
    body = alice_client.get(reverse("gallery:index")).content.decode()
    assert f'href="{reverse("api:account")}"' in body


def test_anonymous_visitors_are_sent_to_sign_in(client, db):
    response = client.get(reverse("api:account"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.post(reverse("api:token_create"), {"name": "x"}).status_code == 302
    assert not ApiToken.objects.exists()


def test_a_new_token_is_shown_once_and_works(alice_client, user):
    response = alice_client.post(reverse("api:token_create"), {"name": "sync script"})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    secret = secret_on(body)
    assert "will not be shown again" in body
    token = ApiToken.objects.get(user=user)
    assert token.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    page = alice_client.get(reverse("api:account")).content.decode()
    assert "sync script" in page and token.prefix in page
    assert secret not in page, "the secret is never shown again"
    assert Client().get(reverse("api:image", args=[1]), headers=bearer(secret)).status_code == 404


def test_a_token_needs_a_name(alice_client):
    response = alice_client.post(reverse("api:token_create"), {"name": "  "})
    assert response.status_code == 400
    assert "Give the token a name" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_revoked_token_is_refused(alice_client, user):
    token, secret = api_token_create(user=user, name="old")
    response = alice_client.post(reverse("api:token_revoke", args=[token.pk]), follow=True)
    assert "Revoked the token “old”" in response.content.decode()
    assert "You have no active tokens" in response.content.decode()
    answer = Client().get(reverse("api:image", args=[1]), headers=bearer(secret))
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_token"


def test_nobody_revokes_another_users_token(client, user, other_user):
    token, _ = api_token_create(user=other_user, name="bob's")
    client.force_login(user)
    assert client.post(reverse("api:token_revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert "bob&#x27;s" not in client.get(reverse("api:account")).content.decode()


def test_the_forms_need_their_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(reverse("api:token_create"), {"name": "x"}).status_code == 403
    token, _ = api_token_create(user=user, name="kept")
    assert client.post(reverse("api:token_revoke", args=[token.pk])).status_code == 403
    page = client.get(reverse("api:account")).content.decode()
    assert page.count("csrfmiddlewaretoken") == page.count('method="post"') == 3
    token.refresh_from_db()
    assert token.revoked_at is None


def test_revoking_needs_post(alice_client, user):
    token, _ = api_token_create(user=user, name="t")
    assert alice_client.get(reverse("api:token_revoke", args=[token.pk])).status_code == 405
