"""Recommendations in headless Chromium: "You may also like" on an image page, "More like your uploads"
on the gallery page of a signed-in user."""
import pytest
from playwright.sync_api import expect

from gallery.models import Image
from tests import images
from tests.conftest import store_indexed
from tests.test_browser import browser, shot, sign_in, site  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser]


@pytest.fixture
def gallery(transactional_db, clean_index, user, other_user):
    """Set up before the browser, whose event loop then stops this thread from querying."""
    for category in ("cat", "dog", "squirrel"):
        for n in range(1, 6):
            store_indexed(images.bench_image(category, n).read_bytes(), f"{category}-{n}.jpg")
    hidden = store_indexed(images.bench_image("cat", 6).read_bytes(), "bobs-hidden-cat.jpg", owner=other_user)
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    mine = store_indexed(images.bench_image("cat", 7).read_bytes(), "my-cat.jpg", owner=user)
    return mine


def test_an_image_page_and_the_gallery_recommend_what_the_viewer_may_see(gallery, site, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site.url)

    page.goto(f"{site.url}/images/{gallery.pk}/")
    section = page.get_by_role("region", name="You may also like")
    expect(section.locator(".tile")).to_have_count(12)
    expect(section).not_to_contain_text("bobs-hidden-cat.jpg")
    expect(section.locator(".tile").first).to_contain_text("cat-")
    shot(page, "you-may-also-like")

    page.goto(f"{site.url}/")
    mine = page.get_by_role("region", name="More like your uploads")
    expect(mine.locator(".tile").first).to_be_visible()
    expect(mine).not_to_contain_text("my-cat.jpg")
    expect(mine).not_to_contain_text("bobs-hidden-cat.jpg")
    shot(page, "more-like-your-uploads")
