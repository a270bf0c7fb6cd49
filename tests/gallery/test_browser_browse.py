"""Browse by look in headless Chromium: the groups' cards, and a group's page, with nothing of another
user's hidden image."""
import pytest
from playwright.sync_api import expect

from gallery.models import Image
from tests import images
from tests.conftest import store_indexed
from tests.search.test_clusters import run_job
from tests.test_browser import browser, shot, site  # noqa: F401 - fixtures
from tests.test_browser_reading import assert_readable, assert_targets, new_page

pytestmark = [pytest.mark.browser]


@pytest.fixture
def grouped(transactional_db, clean_index, settings, other_user):
    """Set up before the browser, whose event loop then stops this thread from querying."""
    settings.LOOKALIKE_CLUSTER_COUNT = 3
    for category in ("cat", "apparel", "squirrel"):
        for n in range(1, 6):
            store_indexed(images.bench_image(category, n).read_bytes(), f"{category}-{n}.jpg")
    hidden = store_indexed(images.bench_image("cat", 6).read_bytes(), "bobs-hidden-cat.jpg", owner=other_user)
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    run_job()
    return hidden


def test_browse_shows_the_groups_and_a_group_s_images_that_a_visitor_may_see(grouped, site, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    page.goto(f"{site.url}/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Browse").click()
    expect(page.get_by_role("heading", name="Browse by look")).to_be_visible()
    cards = page.locator(".cluster-card")
    expect(cards).to_have_count(3)
    expect(page.locator(".cluster-count")).to_have_text(["5 images"] * 3)
    expect(page.locator(f'img[src="{grouped.thumbnail_url}"]')).to_have_count(0)
    for image in page.locator(".cluster-card img").all():
        expect(image).to_have_js_property("complete", True)
    shot(page, "browse")

    cards.first.click()
    expect(page.get_by_role("heading", name="Group 1")).to_be_visible()
    expect(page.locator(".tile")).to_have_count(5)
    names = page.locator(".tile .name").all_text_contents()
    assert len({name.split("-")[0] for name in names}) == 1, names
    expect(page.locator("main")).not_to_contain_text("bobs-hidden-cat.jpg")
    shot(page, "browse-group")


def test_browse_fits_a_phone_and_reads_in_light_and_dark(grouped, site, browser):  # noqa: F811
    for width, scheme in ((390, "light"), (390, "dark"), (1280, "dark")):
        page = new_page(browser, width, scheme)
        page.goto(f"{site.url}/browse/")
        expect(page.locator(".cluster-card")).to_have_count(3)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"/browse/ scrolls sideways by {overflow}px at {width}px"
        assert_readable(page, f"/browse/ at {width}px, {scheme}")
        assert_targets(page, 44 if width < 500 else 24, f"/browse/ at {width}px")
        shot(page, f"browse-{width}-{scheme}")
