import subprocess
import sys

import pytest
from django.test import RequestFactory
from django.urls import reverse

from config.ratelimit import RateLimited, client_address, rate_limit, rate_limit_hit
from gallery.models import Image
from tests import images
from tests.conftest import PROJECT_ROOT, process_env, upload_file


def anonymous_request(address: str = "192.0.2.1", forwarded: str | None = None):
    request = RequestFactory().post("/", REMOTE_ADDR=address,
                                    headers={"X-Forwarded-For": forwarded} if forwarded else None)
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    return request


def user_request(user, address: str = "192.0.2.1"):
    request = anonymous_request(address)
    request.user = user
    return request


class TestTheUploadPage:
    def test_it_is_limited_by_files_too(self, client, user, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "2/day"
        client.force_login(user)

        def files(count: int) -> list:
            return [upload_file(f"{i}.jpg", images.jpeg(i, size=(32, 32))) for i in range(count)]

        response = client.post(reverse("gallery:upload"), {"files": files(3)})
        assert response.status_code == 429
        assert "Too many uploaded files" in response.content.decode()
        assert int(response["Retry-After"]) >= 1
        assert client.get(reverse("gallery:upload")).status_code == 200, "showing the form is free"
        scripted = client.post(reverse("gallery:upload"), {"files": files(3)}, headers={"Accept": "application/json"})
        assert scripted.status_code == 429 and scripted.json()["code"] == "rate_limited"
        assert client.post(reverse("gallery:upload"), {"files": files(2)}).status_code == 200
        assert Image.objects.count() == 2

    def test_a_request_with_too_many_files_is_refused_without_using_the_budget(self, client, user, settings,
                                                                               fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "3/day"
        settings.LOOKALIKE_MAX_UPLOAD_FILES = 2
        client.force_login(user)
        files = [upload_file(f"{i}.jpg", images.jpeg(i, size=(32, 32))) for i in range(3)]
        assert client.post(reverse("gallery:upload"), {"files": files}).status_code == 400
        for file in files:
            file.seek(0)
        assert client.post(reverse("gallery:upload"), {"files": files[:2]}).status_code == 200
        assert Image.objects.count() == 2


class TestWhoIsCounted:
    def test_anonymous_requests_count_per_address_and_users_per_account(self, user, other_user, settings,
                                                                        fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "2/day"
        for _ in range(2):
            rate_limit_hit(anonymous_request("192.0.2.1"), scope="search")
        with pytest.raises(RateLimited):
            rate_limit_hit(anonymous_request("192.0.2.1"), scope="search")
        rate_limit_hit(anonymous_request("192.0.2.2"), scope="search")
        rate_limit_hit(user_request(user, "192.0.2.1"), scope="search")
        rate_limit_hit(user_request(user, "192.0.2.1"), scope="search")
        with pytest.raises(RateLimited):
            rate_limit_hit(user_request(user, "198.51.100.9"), scope="search")
        rate_limit_hit(user_request(other_user, "192.0.2.1"), scope="search")

    def test_scopes_count_apart(self, settings, fresh_cache):
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "1/day"
        settings.LOOKALIKE_RATE_LIMIT_URL_FETCH = "1/day"
        rate_limit_hit(anonymous_request(), scope="search")
        rate_limit_hit(anonymous_request(), scope="url_fetch")
        with pytest.raises(RateLimited, match="Too many URL fetches"):
            rate_limit_hit(anonymous_request(), scope="url_fetch")

    def test_forwarded_addresses_are_ignored_unless_proxies_are_trusted(self, settings):
        request = anonymous_request("10.0.0.5", forwarded="203.0.113.9, 198.51.100.7")
        assert client_address(request) == "10.0.0.5"
        settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 1
        assert client_address(request) == "198.51.100.7", "what the one trusted proxy saw; the rest is forgeable"
        settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 2
        assert client_address(request) == "203.0.113.9"
        settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 3
        assert client_address(request) == "10.0.0.5", "fewer entries than proxies: the header is not trusted"
        settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 1
        assert client_address(anonymous_request("10.0.0.5", forwarded="not-an-address")) == "10.0.0.5"

    def test_clients_behind_a_trusted_proxy_count_apart(self, settings, fresh_cache):
        settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 1
        settings.LOOKALIKE_RATE_LIMIT_SEARCH = "1/day"
        rate_limit_hit(anonymous_request("10.0.0.5", forwarded="203.0.113.1"), scope="search")
        rate_limit_hit(anonymous_request("10.0.0.5", forwarded="203.0.113.2"), scope="search")
        with pytest.raises(RateLimited):
            rate_limit_hit(anonymous_request("10.0.0.5", forwarded="198.51.100.1, 203.0.113.1"), scope="search")


CHILD = """
import sys
import django
django.setup()
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from config.ratelimit import RateLimited, rate_limit_hit
refused = 0
for _ in range(int(sys.argv[1])):
    request = RequestFactory().post("/", REMOTE_ADDR="192.0.2.77")
    request.user = AnonymousUser()
    try:
        rate_limit_hit(request, scope="search")
    except RateLimited:
        refused += 1
print(refused)
"""


def test_the_limit_holds_across_processes(settings, fresh_cache, db):
    settings.LOOKALIKE_RATE_LIMIT_SEARCH = "3/day"
    env = dict(process_env(), LOOKALIKE_TEST_CACHE_PREFIX=fresh_cache, LOOKALIKE_RATE_LIMIT_SEARCH="3/day")

    def child(hits: int) -> int:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(hits)], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())

    assert child(2) == 0
    rate_limit_hit(anonymous_request("192.0.2.77"), scope="search")
    assert child(1) == 1, "another process sees this one's request"
    with pytest.raises(RateLimited):
        rate_limit_hit(anonymous_request("192.0.2.77"), scope="search")


def test_the_decorator_counts_only_the_methods_it_is_told(settings, fresh_cache):
    settings.LOOKALIKE_RATE_LIMIT_SEARCH = "1/day"
    from django.http import HttpResponse

    view = rate_limit("search", methods=("GET", "POST"))(lambda request: HttpResponse("ok"))
    get = RequestFactory().get("/", REMOTE_ADDR="192.0.2.8")
    from django.contrib.auth.models import AnonymousUser

    get.user = AnonymousUser()
    assert view(get).status_code == 200
    assert view(get).status_code == 429


def test_an_unknown_scope_is_a_programming_error():
    with pytest.raises(ValueError, match="Unknown rate-limit scope"):
        rate_limit("searches")
