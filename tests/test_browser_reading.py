"""What a person reads and reaches on the site, in headless Chromium: announcements and focus after
a search, result cards at three widths, focus outlines, WCAG AA contrast computed from the page's
styles in light and dark, tap targets, files refused before they are sent, and the paste hint."""
import re
import time
from pathlib import Path
from typing import Literal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from gallery.models import Image
from gallery.uploads import file_too_large_message, upload_too_large_detail
from tests import images
from tests.conftest import store, store_indexed
from tests.test_browser import browser, halves_gallery, paste_picture, shot, sign_in, site  # noqa: F401

pytestmark = pytest.mark.browser

WIDTHS = (390, 768, 1280)

# Functions run in the page, on its computed styles (a file of their own: they are JavaScript).
PAGE_CHECKS = (Path(__file__).parent / "page_checks.js").read_text()


def assert_readable(page: Page, what: str) -> None:
    failures = page.evaluate(f"{PAGE_CHECKS}.contrastFailures()")
    assert failures == [], f"{what}: {failures}"


def assert_targets(page: Page, least: int, what: str) -> None:
    small = page.evaluate(f"least => {PAGE_CHECKS}.smallTargets(least)", least)
    assert small == [], f"{what}: controls under {least} px tall: {small}"


def new_page(browser: Browser, width: int, scheme: Literal["light", "dark"] = "light") -> Page:  # noqa: F811
    """A page as a phone shows it at 390 px (a touch screen), else as a desktop browser does."""
    phone = width < 500
    context = browser.new_context(viewport={"width": width, "height": 844 if phone else 800}, is_mobile=phone,
                                  has_touch=phone, color_scheme=scheme)
    return context.new_page()


def search_by_paste(page: Page, base: str, picture: bytes) -> None:
    page.goto(f"{base}/search/")
    paste_picture(page, "pasted.jpg", picture)
    expect(page.locator("[data-result-grid] .tile")).to_have_count(24)


def test_a_search_says_what_came_once_and_moves_to_the_results(site, halves_gallery, browser):  # noqa: F811
    whole, _halves, _others = halves_gallery
    for width in (390, 1280):
        page = new_page(browser, width)
        page.goto(f"{site.url}/search/")
        assert page.locator("[data-results]").get_attribute("aria-live") is None, "every card would be read out"
        # The server answers slowly, as a cold one does: the status must not tick meanwhile.
        page.route("**/search/", lambda route: (time.sleep(1.5), route.continue_())[1])
        page.evaluate("""() => {
            const status = document.querySelector("[data-search-progress]");
            window.statusTexts = [];
            new MutationObserver(() => window.statusTexts.push(status.textContent))
                .observe(status, { childList: true, characterData: true, subtree: true });
        }""")
        paste_picture(page, "pasted.jpg", whole)
        expect(page.locator("[data-search-elapsed]")).to_have_text(re.compile(r"\d\.\d s"))
        assert page.locator("[data-search-elapsed]").get_attribute("aria-hidden") == "true"
        status = page.locator("[data-search-progress]")
        expect(status).to_have_text(re.compile(r"^24 matches, best \d+%$"))
        heading = page.get_by_role("heading", name=re.compile(r"24 matches, best \d+%"))
        expect(heading).to_be_focused()
        said = page.evaluate("window.statusTexts")
        assert said == ["Searching…", status.inner_text()], f"the status line said {said}"
        # The results heading is on screen, and the first result starts on screen below it.
        top = page.evaluate("document.querySelector('[data-results-heading]').getBoundingClientRect().top")
        first = page.evaluate("document.querySelector('[data-result-grid] .tile').getBoundingClientRect().top")
        # Within a pixel of the top: scrolling lands on fractional positions.
        assert -1 < top < 100 and first < page.viewport_size["height"], (top, first)
        expect(page.locator(".crop-hint")).to_contain_text("Region")
        if width == 1280:
            # The query card is as wide as its picture and facts, not a small picture in a wide box.
            card, picture, facts = (page.locator(selector).bounding_box()
                                    for selector in (".query-card", ".cropper", ".query-facts"))
            assert card["width"] <= picture["width"] + facts["width"] + 3 * 16 + 24 + 4, (card, picture, facts)
            shot(page, "search-announced-1280")
        page.context.close()


def test_result_cards_read_whole_at_every_width_in_light_and_dark(site, halves_gallery, browser):  # noqa: F811
    whole, _halves, _others = halves_gallery
    for scheme in ("light", "dark"):
        for width in WIDTHS:
            page = new_page(browser, width, scheme)
            search_by_paste(page, site.url, whole)
            assert scheme in page.evaluate("getComputedStyle(document.documentElement).colorScheme")
            tiles = page.locator("[data-result-grid] .tile")
            for i in range(tiles.count()):
                tile = tiles.nth(i)
                badges = (".badge",) if tile.locator(".badge").count() else ()
                for part in (".score", ".name", ".similar-link", *badges):
                    fits = tile.locator(part).evaluate(
                        "e => e.getBoundingClientRect().width >= 8 && e.scrollWidth <= e.clientWidth + 1 "
                        "&& getComputedStyle(e).textOverflow !== 'ellipsis'")
                    assert fits, f"{part} of result {i + 1} is cut at {width} px: {tile.inner_text()!r}"
                name = tile.locator(".name")
                assert name.inner_text().endswith(".jpg"), name.inner_text()
            expect(tiles.first.locator(".badge")).to_have_text(re.compile("Same file|Edited copy"))
            # A person reads the numbers in the order of the list.
            percents = [int(text.removesuffix("% match")) for text in tiles.locator(".score").all_inner_texts()]
            assert percents == sorted(percents, reverse=True), percents
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the results scroll sideways by {overflow}px at {width}"
            assert_readable(page, f"results at {width} px, {scheme}")
            assert_targets(page, 44 if width < 500 else 24, f"results at {width} px")
            shot(page, f"results-{width}-{scheme}")
            page.context.close()


LONG_NAME = "holiday-2024-beach-sunset-with-the-whole-family-IMG_20240812_183000.jpg"


@pytest.fixture
def copies_with_long_names(transactional_db, clean_index, settings):
    """A drawing stored under a long name, its halves and ten other drawings, with an "edited copy"
    threshold low enough that most results carry a badge beside their name."""
    settings.LOOKALIKE_EDITED_COPY_THRESHOLD = 0.85
    whole = images.picture(5, (640, 480))
    original = images.encode(whole, "JPEG", quality=92)
    store_indexed(original, LONG_NAME)
    for box, name in (((0, 0, 320, 480), "left-half-of-the-holiday-picture.jpg"),
                      ((320, 0, 640, 480), "right_half_of_the_holiday_picture_without_any_spaces.jpg")):
        store_indexed(images.encode(whole.crop(box), "JPEG", quality=92), name)
    for i in range(10):
        store_indexed(images.jpeg(100 + i), f"another-drawing-with-a-long-name-{i:02d}.jpg")
    return original


def test_a_verdict_badge_never_covers_the_name_and_the_numbers_fall_at_every_width(
        site, copies_with_long_names, browser):  # noqa: F811
    for width in (360, 768, 1280):
        page = new_page(browser, width)
        page.goto(f"{site.url}/search/")
        paste_picture(page, "pasted.jpg", copies_with_long_names)
        tiles = page.locator("[data-result-grid] .tile")
        expect(tiles).to_have_count(13)
        expect(tiles.first.locator(".badge")).to_have_text("Same file")
        expect(tiles.first.locator(".name")).to_have_text(LONG_NAME)
        assert tiles.locator(".badge-edited").count() >= 2, "too few badges to test"
        hidden = page.evaluate(f"{PAGE_CHECKS}.namesHidden()")
        assert hidden == [], f"at {width} px: {hidden}"
        percents = [int(text.removesuffix("% match")) for text in tiles.locator(".score").all_inner_texts()]
        assert percents == sorted(percents, reverse=True), percents
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the results scroll sideways by {overflow}px at {width}"
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, f"results-badges-{width}")
        page.context.close()


@pytest.fixture
def gallery_of_states(transactional_db, clean_index):
    """More than a page of images, some still waiting for the worker: their badges show."""
    owner = get_user_model().objects.create_user("alice", password="alice-password")
    stored = [store(images.jpeg(200 + i), f"photo-{i:02d}.jpg", owner=owner) for i in range(50)]
    # Newest first: the first tiles are indexed, then one being embedded and one failed. Their
    # states hold while a worker of an earlier test runs: it claims only queued images and
    # embedding ones whose claim has expired (a queued badge shares the embedding one's colours).
    Image.objects.update(state=Image.State.INDEXED)
    Image.objects.filter(pk=stored[36].pk).update(state=Image.State.EMBEDDING, claim_token="held by the test",
                                                  claimed_at=timezone.now())
    Image.objects.filter(pk=stored[35].pk).update(state=Image.State.FAILED, error="Not a picture after all.")
    return stored


def test_gallery_tiles_are_one_tab_stop_with_a_visible_focus_in_light_and_dark(site, gallery_of_states, browser):  # noqa: F811
    newest = gallery_of_states[-1]
    for scheme in ("light", "dark"):
        page = new_page(browser, 1280, scheme)
        sign_in(page, site.url)
        page.goto(f"{site.url}/")
        expect(page.locator(".tile .badge-failed")).to_have_text("Failed")
        expect(page.locator(".tile .badge-embedding")).to_have_text("Embedding")
        assert_readable(page, f"gallery, {scheme}")
        assert_targets(page, 24, "gallery")
        if scheme == "dark":
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert sum(map(int, re.findall(r"\d+", background)[:3])) < 3 * 60, background
            shot(page, "gallery-1280-dark")
            page.goto(f"{site.url}/images/{newest.pk}/")
            assert_readable(page, "image page, dark")
            page.goto(f"{site.url}/upload/")
            assert_readable(page, "upload page, dark")
            shot(page, "upload-1280-dark")
            page.context.close()
            continue

        # The picture's alt is empty: the link is named once, by the file name beside it.
        first = page.locator(".tile").first
        assert first.locator("img").get_attribute("alt") == ""
        assert first.aria_snapshot().count(newest.original_name) == 1, first.aria_snapshot()

        page.locator("main").focus()
        page.keyboard.press("Tab")
        link = first.locator(".tile-link")
        expect(link).to_be_focused()
        clipped = link.evaluate(f"e => {PAGE_CHECKS}.outlineClipped(e)")
        assert clipped == "", clipped
        shot(page, "gallery-focus-1280-light")

        # "Similar" is one arrow away from its tile, and back.
        page.keyboard.press("ArrowRight")
        expect(first.get_by_role("link", name="Similar")).to_be_focused()
        page.keyboard.press("ArrowLeft")
        expect(link).to_be_focused()

        # One stop per tile: "Next" comes after the 48 tiles and a few more stops, not 96.
        presses = 0
        while page.evaluate("document.activeElement.textContent.trim()") != "Next ›" and presses < 100:
            page.keyboard.press("Tab")
            presses += 1
        assert presses <= 48 + 2, f"{presses} presses of Tab from the first tile to Next"

        page.goto(f"{site.url}/images/{newest.pk}/")
        assert_readable(page, "image page, light")
        page.goto(f"{site.url}/upload/")
        assert_readable(page, "upload page, light")
        assert_targets(page, 24, "upload page")
        page.context.close()

    page = new_page(browser, 390)
    sign_in(page, site.url)
    page.goto(f"{site.url}/")
    assert_targets(page, 44, "gallery on a touch screen")
    page.locator(f"a[href='/images/{newest.pk}/similar/']").tap()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Images similar to")


@pytest.fixture
def small_limit(settings):
    settings.LOOKALIKE_MAX_UPLOAD_BYTES = 30_000
    return settings.LOOKALIKE_MAX_UPLOAD_BYTES


def test_a_file_over_the_limit_is_refused_before_it_is_sent(site, user, small_limit, browser, tmp_path):  # noqa: F811
    big = tmp_path / "big.jpg"
    big.write_bytes(images.jpeg(9) + b"\0" * small_limit)
    small = tmp_path / "small.jpg"
    small.write_bytes(images.jpeg(10))
    page = new_page(browser, 1280)
    sent = []
    page.on("request", lambda request: request.method == "POST" and sent.append(request.url))

    page.goto(f"{site.url}/search/")
    page.locator("input[name=image]").set_input_files(str(big))
    expect(page.locator("[role=alert]")).to_have_text(file_too_large_message(small_limit))
    expect(page.locator(".dropzone-title")).to_have_text("Drop a picture here")
    assert page.locator("input[name=image]").evaluate("e => e.files.length") == 0
    page.wait_for_timeout(300)
    assert sent == [], f"the file was sent: {sent}"
    # The server, sent the same file, says the same.
    answered = page.evaluate("""async (size) => {
        const form = new FormData(document.querySelector("[data-search-form]"));
        form.set("image", new File([new Uint8Array(size)], "big.jpg", { type: "image/jpeg" }));
        const reply = await fetch("/search/", { method: "POST", body: form, headers: { "X-Requested-With": "fetch" } });
        return new DOMParser().parseFromString(await reply.text(), "text/html").querySelector(".error").textContent;
    }""", big.stat().st_size)
    assert answered == file_too_large_message(small_limit)

    sign_in(page, site.url)
    sent.clear()
    page.goto(f"{site.url}/upload/")
    page.locator("input[name=files]").set_input_files([str(small), str(big)])
    expect(page.locator(".page-head")).to_contain_text("up to 29.3 KB each")
    message = f"big.jpg is too large: {upload_too_large_detail()}"
    expect(page.locator("[data-refusal]")).to_have_text(message)
    expect(page.locator(".dropzone-title")).to_have_text("Drop images here")
    page.wait_for_timeout(300)
    assert sent == [], f"the files were sent: {sent}"
    answered = page.evaluate("""async (size) => {
        const form = new FormData(document.querySelector("[data-upload-form]"));
        form.append("files", new File([new Uint8Array(size)], "big.jpg", { type: "image/jpeg" }));
        const reply = await fetch("/upload/", { method: "POST", body: form, headers: { Accept: "application/json" } });
        return (await reply.json()).message;
    }""", big.stat().st_size)
    assert answered == message
    shot(page, "upload-refused-1280-light")
    # A file within the limit then goes as before, and the refusal is gone.
    page.locator("input[name=files]").set_input_files(str(small))
    expect(page.locator("[data-refusal]")).to_have_text("")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".upload-row")).to_contain_text("small.jpg")
    assert settings.LOOKALIKE_MAX_UPLOAD_BYTES == small_limit


def test_the_paste_hint_shows_where_a_keyboard_can_paste(site, db, browser):  # noqa: F811
    desktop = new_page(browser, 1280)
    desktop.goto(f"{site.url}/search/")
    expect(desktop.locator(".paste-hint")).to_have_count(1)
    expect(desktop.locator(".paste-hint")).to_be_visible()
    expect(desktop.locator("#dropzone-help")).to_contain_text("paste one with Ctrl+V")
    phone = new_page(browser, 390)
    phone.goto(f"{site.url}/search/")
    expect(phone.locator(".paste-hint")).to_have_count(1)
    expect(phone.locator(".paste-hint")).to_be_hidden()
    assert phone.locator("#dropzone-help").inner_text() == "or press to choose one"
    assert_targets(phone, 44, "search page on a touch screen")
    assert_readable(phone, "search page on a phone")
    shot(phone, "search-390-light")
    dark = new_page(browser, 768, "dark")
    dark.goto(f"{site.url}/search/")
    assert_readable(dark, "search page, dark")
    shot(dark, "search-768-dark")
