"""Security headers, the policy the site's own pages satisfy, and DEBUG staying off."""
import re

import pytest
from django.urls import reverse

from tests import images
from tests.config.test_settings import PRODUCTION_KEY, bare_env, manage
from tests.conftest import store_indexed, upload_file

INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\sstyle=|\son[a-z]+=", re.IGNORECASE)


@pytest.fixture
def pages(alice_client, user):
    image = store_indexed(images.jpeg(1), "mine.jpg", owner=user)
    search = alice_client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1))})
    return {
        "gallery": alice_client.get(reverse("gallery:index")),
        "detail": alice_client.get(reverse("gallery:detail", args=[image.pk])),
        "upload": alice_client.get(reverse("gallery:upload")),
        "search": alice_client.get(reverse("search:search")),
        "search results": search,
        "similar": alice_client.get(reverse("search:similar", args=[image.pk])),
        "sign in": alice_client.get(reverse("login")),
        "thumbnail": alice_client.get(image.thumbnail.url),
    }


def test_every_response_carries_the_security_headers(pages, settings):
    for name, response in pages.items():
        assert response.status_code == 200, name
        assert response["X-Content-Type-Options"] == "nosniff", name
        assert response["Referrer-Policy"] == "same-origin", name
        assert response["X-Frame-Options"] == "DENY", name
        assert response["Content-Security-Policy"] == settings.CONTENT_SECURITY_POLICY, name


def test_the_pages_have_no_inline_script_or_style_that_the_policy_would_block(pages, settings):
    assert "script-src" not in settings.CONTENT_SECURITY_POLICY, "scripts fall back to default-src 'self'"
    assert "'unsafe-inline'" not in settings.CONTENT_SECURITY_POLICY
    for name, response in pages.items():
        if response["Content-Type"].startswith("text/html"):
            body = response.content.decode()
            assert not INLINE.search(body), f"{name}: {INLINE.search(body).group(0)}"
    assert "data:image/jpeg;base64," in pages["search results"].content.decode()
    assert "img-src 'self' data:" in settings.CONTENT_SECURITY_POLICY


def test_served_copies_are_inline_images_that_are_never_sniffed(pages):
    thumbnail = pages["thumbnail"]
    assert thumbnail["Content-Type"] == "image/jpeg"
    assert thumbnail["Content-Disposition"] == "inline"
    assert thumbnail["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("module", ["config.settings.local", "config.settings.production"])
def test_debug_is_off_unless_asked_for(tmp_path, module):
    environ = bare_env(DJANGO_SETTINGS_MODULE=module, DATA_DIR=str(tmp_path), SECRET_KEY=PRODUCTION_KEY,
                       ALLOWED_HOSTS="lookalike.example.org")
    environ.pop("DEBUG", None)
    proc = manage(environ, "shell", "-c", "from django.conf import settings; print(settings.DEBUG)")
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stderr


def test_production_keeps_debug_off_even_when_asked(tmp_path):
    environ = bare_env(DJANGO_SETTINGS_MODULE="config.settings.production", DATA_DIR=str(tmp_path),
                       SECRET_KEY=PRODUCTION_KEY, ALLOWED_HOSTS="lookalike.example.org", DEBUG="true")
    proc = manage(environ, "shell", "-c", "from django.conf import settings; print(settings.DEBUG)")
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stderr
