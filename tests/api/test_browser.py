"""The account page and the API docs in headless Chromium."""
import json
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.test_browser import browser, shot, sign_in, site  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def api_get(base: str, path: str, secret: str) -> int:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_token_is_made_by_keyboard_shown_once_and_revoked(site, user, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site.url)
    page.get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.get_by_label("New token's name").fill("photo sync")
    page.keyboard.press("Enter")
    secret_box = page.get_by_label("Your new token", exact=True)
    expect(secret_box).to_be_visible()
    secret = secret_box.input_value()
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    expect(page.get_by_role("table")).to_contain_text("photo sync")
    shot(page, "account-new-token")
    assert api_get(site.url, "/api/v1/images/999999", secret) == 404, "the token works"

    page.goto(site.url + "/account/")
    expect(page.get_by_label("Your new token", exact=True)).to_have_count(0)
    assert secret not in page.content()
    page.get_by_role("button", name="Revoke the token photo sync").click()
    expect(page.get_by_text("Revoked the token “photo sync”")).to_be_visible()
    assert api_get(site.url, "/api/v1/images/999999", secret) == 401


def test_the_account_page_and_docs_fit_a_phone(site, user, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    sign_in(page, site.url)
    for name, path in (("account", "/account/"), ("api-docs", "/api/v1/docs/")):
        page.goto(site.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"
        shot(page, f"phone-{name}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Lookalike API v1")
    described = json.loads(page.evaluate("fetch('/api/v1/openapi.json').then(r => r.text())"))
    assert described["openapi"].startswith("3.")
