"""Tag suggestions and search by words in headless Chromium: a curator accepts a suggestion in the
admin, and a visitor then finds the image by that word on the search page."""
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from gallery.models import Tag
from search import tag_suggestions
from tests import images
from tests.conftest import store_indexed
from tests.test_browser import admin_sign_in, browser, shot, site  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser]


@pytest.fixture
def suggested(transactional_db, clean_index):
    """Set up before the browser, whose event loop then stops this thread from querying."""
    get_user_model().objects.create_superuser("root", password="root-password")
    for category in ("cat", "dog"):
        tag = Tag.objects.get_or_create(name=category)[0]
        for n in (1, 2, 3):
            store_indexed(images.bench_image(category, n).read_bytes(), f"{category}-{n}.jpg").tags.add(tag)
    untagged = store_indexed(images.bench_image("cat", 11).read_bytes(), "new-cat.jpg")
    tag_suggestions.tag_suggestions_make(image_ids=[untagged.pk])
    return untagged


def test_a_curator_accepts_a_suggestion_and_the_image_is_found_by_the_word(suggested, site, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    admin_sign_in(page, site.url, "/admin/gallery/image/%3Fsuggestions%3Dyes")
    # A worker left running by another test may have suggested words for the tagged images too.
    row = page.locator("#result_list tbody tr").filter(has_text="new-cat.jpg")
    expect(row).to_have_count(1)
    expect(row.locator(".field-suggested_tags")).to_contain_text("cat (")
    shot(page, "admin-tag-suggestions-list")

    page.goto(f"{site.url}/admin/gallery/image/{suggested.pk}/suggestions/")
    expect(page.locator(".tag-suggestions table")).to_contain_text("similar tagged images")
    shot(page, "admin-tag-suggestions-image")
    page.get_by_role("button", name="Accept").first.click()
    expect(page.locator(".messagelist")).to_contain_text("Added 1 tag.")
    expect(page.locator(".tag-suggestions")).to_contain_text("Tags: cat")

    page.goto(f"{site.url}/search/")
    page.get_by_label("or search by words that images are tagged with").fill("cats")
    page.get_by_label("or search by words that images are tagged with").press("Enter")
    tiles = page.locator("[data-results] .tile")
    expect(tiles).to_have_count(4)
    expect(page.locator(".result-summary")).to_contain_text("Tagged with cats, newest first")
    expect(tiles.first).to_contain_text("new-cat.jpg")
    shot(page, "search-by-words")
