"""A copy noticed at upload, in headless Chromium with a real worker: the upload page says which
gallery image the new upload looks like an edited copy of, and curators find the pair for review."""
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tests import images
from tests.conftest import store_indexed
from tests.test_browser import admin_sign_in, browser, drop_files, shot, sign_in, site  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.worker]


@pytest.fixture
def original(worker, user):
    """Set up before the browser, whose event loop then stops this thread from querying."""
    get_user_model().objects.create_superuser("root", password="root-password")
    for n in (1, 2):
        store_indexed(images.bench_image("dog", n).read_bytes(), f"dog-{n}.jpg")
    return store_indexed(images.bench_image("cat", 40).read_bytes(), "cat-original.jpg")


def test_the_upload_page_says_an_upload_looks_like_an_edited_copy(original, site, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site.url)
    page.goto(f"{site.url}/upload/")
    drop_files(page, {"cropped-cat.jpg": images.bench_crop("cat", 40), "shapes.jpg": images.jpeg(3)})
    page.get_by_role("button", name="Upload").click()
    rows = page.locator(".upload-row")
    copy_row = rows.filter(has_text="cropped-cat.jpg")
    expect(copy_row.locator(".badge")).to_have_text("Indexed", timeout=90_000)
    expect(copy_row.locator(".copy-notice")).to_have_text(f"Looks like an edited copy of #{original.pk}")
    expect(copy_row.locator(".copy-notice a")).to_have_attribute("href", f"/images/{original.pk}/")
    expect(rows.filter(has_text="shapes.jpg").locator(".badge")).to_have_text("Indexed", timeout=90_000)
    expect(rows.filter(has_text="shapes.jpg").locator(".copy-notice")).to_have_count(0)
    shot(page, "upload-copy-noticed")

    admin = browser.new_page(viewport={"width": 1280, "height": 900})
    admin_sign_in(admin, site.url, "/admin/gallery/image/duplicates/")
    group = admin.locator(".duplicate-group")
    expect(group).to_have_count(1)
    expect(group.locator("h3")).to_contain_text("Noticed at upload")
    expect(group).to_contain_text("cat-original.jpg")
    expect(group).to_contain_text("cropped-cat.jpg")
    shot(admin, "admin-copy-noticed")
