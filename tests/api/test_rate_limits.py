"""The API's rate limits: requests and uploaded files per user, whatever token they use."""
import time

from django.test import Client
from django.urls import reverse

from api.services import api_token_create
from gallery.models import Image
from tests import images
from tests.api.conftest import bearer
from tests.conftest import upload_file

IMAGES_URL = "/api/v1/images"


def upload(client, secret, *seeds: int):
    files = [upload_file(f"{seed}.jpg", images.jpeg(seed, size=(32, 32))) for seed in seeds]
    return client.post(IMAGES_URL, {"image": files}, headers=bearer(secret))


class TestTheApi:
    def test_requests_beyond_the_limit_get_429_and_retry_after(self, client, user, secret, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "2/day"
        assert upload(client, secret, 1).status_code == 202
        assert upload(client, secret, 2).status_code == 202
        response = upload(client, secret, 3)
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
        assert "2 per day" in response.json()["message"]
        assert 1 <= int(response["Retry-After"]) <= 86400
        assert Image.objects.count() == 2

    def test_uploads_count_files_and_a_refused_request_uses_nothing(self, client, user, secret, settings,
                                                                    fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "3/day"
        assert upload(client, secret, 1, 2).status_code == 202
        assert upload(client, secret, 3, 4).status_code == 429, "two files do not fit in what is left"
        assert upload(client, secret, 5).status_code == 202
        assert upload(client, secret, 6).status_code == 429
        assert Image.objects.count() == 3

    def test_each_user_has_a_budget_of_their_own(self, client, user, secret, other_secret, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "1/day"
        assert upload(client, secret, 1).status_code == 202
        assert upload(client, secret, 2).status_code == 429
        assert upload(client, other_secret, 3).status_code == 202, "the same address, another user"

    def test_a_limit_of_zero_is_no_limit(self, client, user, secret, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "0"
        for seed in range(5):
            assert upload(client, secret, seed).status_code == 202

    def test_a_new_window_starts_afresh(self, client, user, secret, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "1/second"
        # Start just after a second begins, so that two uploads fit in one window.
        time.sleep(1 - time.time() % 1 + 0.01)
        assert upload(client, secret, 1).status_code == 202
        refused = upload(client, secret, 2)
        assert refused.status_code == 429 and refused["Retry-After"] == "1"
        time.sleep(1 - time.time() % 1 + 0.01)
        assert upload(client, secret, 2).status_code == 202


def test_a_token_is_counted_as_its_user(client, user, settings, fresh_cache):
    settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "1/day"
    _, first = api_token_create(user=user, name="one")
    _, second = api_token_create(user=user, name="two")
    assert upload(client, first, 1).status_code == 202
    assert upload(client, second, 2).status_code == 429
    browser = Client()
    browser.force_login(user)
    assert browser.post(reverse("gallery:upload"), {"files": [upload_file("3.jpg", images.jpeg(3))]}).status_code == 429
