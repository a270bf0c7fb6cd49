"""The site driven in headless Chromium (Debian's package) through Playwright, with a real worker."""
import base64
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests import images
from tests.conftest import PROJECT_ROOT, store_indexed

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def site(django_db_setup, live_server):
    """The live server, set up after (so torn down before) the test database, whose removal
    fails while the server thread still holds a connection to it."""
    return live_server


@pytest.fixture
def browser():
    # Playwright's sync API runs an event loop in this thread, in which Django refuses to query
    # the database: tests ask for the browser after their database fixtures and query nothing
    # while it is up.
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("alice-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out alice")).to_be_visible()


def admin_sign_in(page: Page, base: str, next_path: str) -> None:
    """Sign in to the admin as the superuser "root" (password "root-password"), landing on ``next_path``."""
    page.goto(f"{base}/admin/login/?next={next_path}")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("root-password")
    page.get_by_role("button", name="Log in").click()


def drop_files(page: Page, files: dict[str, bytes]) -> None:
    """Drop files on the page the way a file manager does: a drop event carrying a DataTransfer."""
    payload = {name: base64.b64encode(data).decode() for name, data in files.items()}
    page.evaluate("""(files) => {
        const transfer = new DataTransfer();
        for (const [name, b64] of Object.entries(files)) {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        }
        const target = document.querySelector("main");
        target.dispatchEvent(new DragEvent("dragenter", { bubbles: true, dataTransfer: transfer }));
        target.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: transfer }));
    }""", payload)


def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.worker
def test_upload_by_drag_and_drop_then_search(worker, site, user, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    blocked = []
    page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
    base = site.url
    sign_in(page, base)

    assert "default-src 'self'" in page.goto(f"{base}/upload/").headers["content-security-policy"]
    cat = images.bench_image("cat", 5).read_bytes()
    drop_files(page, {"cat.jpg": cat, "shapes.jpg": images.jpeg(3), "cat-again.jpg": cat, "notes.jpg": b"hello"})
    expect(page.locator(".dropzone-title")).to_have_text("4 files chosen")
    page.get_by_role("button", name="Upload").click()
    rows = page.locator(".upload-row")
    expect(rows).to_have_count(4)
    expect(rows.filter(has_text="notes.jpg")).to_contain_text("Refused")
    expect(rows.filter(has_text="cat-again.jpg")).to_contain_text("Duplicate")
    # The states update without a reload, until the worker has indexed both images.
    expect(rows.filter(has_text="shapes.jpg").locator(".badge")).to_have_text("Indexed", timeout=60_000)
    expect(rows.filter(has=page.get_by_text("cat.jpg", exact=True)).locator(".badge")).to_have_text(
        "Indexed", timeout=60_000)
    expect(rows.first).to_contain_text("cat.jpg")
    # Stored with a placeholder, then the thumbnail the worker made from the one decode.
    expect(rows.filter(has_text="shapes.jpg").locator("img.upload-thumb")).to_have_attribute(
        "src", re.compile(r"/media/thumbs/"), timeout=10_000)
    shot(page, "upload")

    page.goto(f"{base}/")
    expect(page.locator(".tile")).to_have_count(2)
    shot(page, "gallery")

    page.goto(f"{base}/search/")
    query = tmp_path / "query.jpg"
    query.write_bytes(cat)
    page.locator("input[name=image]").set_input_files(str(query))
    first = page.locator(".tile").first
    # The first search by picture in this process loads the model.
    expect(first).to_contain_text("cat.jpg", timeout=60_000)
    expect(first.locator(".score")).to_have_text("100% match")
    shot(page, "search-results")

    first.get_by_role("link", name="Similar").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Images similar to cat.jpg")
    expect(page.locator(".tile")).to_have_count(1)
    shot(page, "similar")
    assert blocked == [], "the pages break their own Content-Security-Policy"


def test_pages_fit_a_phone_and_work_by_keyboard(site, db, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    for name, path in (("gallery", "/"), ("search", "/search/"), ("sign-in", "/accounts/login/")):
        page.goto(site.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"
        assert shot(page, f"phone-{name}").stat().st_size > 0
    page.goto(site.url + "/search/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.locator("input[name=image]")).to_be_focused()


def paste_picture(page: Page, name: str, data: bytes) -> None:
    """Paste the way Ctrl+V does after copying an image: a paste event carrying the file."""
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const paste = new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
        document.dispatchEvent(paste);
    }""", [name, base64.b64encode(data).decode()])


@pytest.fixture
def halves_gallery(transactional_db, clean_index):
    """A photo's two halves among 24 other pictures: more than one page of results."""
    whole = images.picture(5, (640, 480))
    halves = [store_indexed(images.encode(whole.crop(box), "JPEG", quality=92), name)
              for box, name in (((0, 0, 320, 480), "left-half.jpg"), ((320, 0, 640, 480), "right-half.jpg"))]
    others = [store_indexed(images.jpeg(100 + i), f"other-{i}.jpg") for i in range(24)]
    return images.encode(whole, "JPEG", quality=92), halves, others


def test_search_by_paste_then_a_region_then_load_more(site, halves_gallery, browser):
    whole, _halves, _others = halves_gallery
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/search/")
    paste_picture(page, "pasted.jpg", whole)
    tiles = page.locator("[data-result-grid] .tile")
    expect(tiles).to_have_count(24)
    expect(page.locator(".query-card")).to_contain_text("640 × 480 pixels")
    expect(tiles.nth(0)).to_contain_text("half.jpg")
    shot(page, "search-pasted")

    page.get_by_role("button", name="Load more").click()
    expect(tiles).to_have_count(26)
    expect(page.get_by_role("button", name="Load more")).to_have_count(0)

    # Drag over the right half of the picture shown: that region alone is searched.
    picture = page.locator("[data-cropper] img")
    picture.scroll_into_view_if_needed()
    box = picture.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.52, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.move(box["x"] + box["width"] - 1, box["y"] + box["height"] - 1, steps=5)
    page.mouse.up()
    expect(page.locator(".query-card")).to_contain_text("searching the region")
    expect(tiles.nth(0)).to_contain_text("right-half.jpg")
    expect(page.locator("[data-crop-box]")).to_be_visible()
    shot(page, "search-region")

    page.get_by_role("button", name="Search the whole picture").click()
    expect(page.locator(".query-card")).not_to_contain_text("searching the region")

    tiles.nth(0).get_by_role("link", name="Similar").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Images similar to")
    expect(tiles).to_have_count(24)


def test_search_says_what_went_wrong_and_when_nothing_matches(site, halves_gallery, browser, tmp_path):
    whole, _halves, _others = halves_gallery
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    page.goto(f"{site.url}/search/")
    page.get_by_label("or search by the address of a picture").fill("http://127.0.0.1:1/secret.jpg")
    page.get_by_role("button", name="Search by address").click()
    expect(page.get_by_role("alert")).to_contain_text("only public addresses are fetched")
    shot(page, "phone-search-error")

    not_a_picture = tmp_path / "notes.jpg"
    not_a_picture.write_bytes(b"meeting notes, not a picture")
    page.locator("input[name=image]").set_input_files(str(not_a_picture))
    expect(page.get_by_role("alert")).to_contain_text("not an image")

    page.get_by_text("Options and filters").click()
    page.get_by_label("Tags").fill("volcano")
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(whole)
    page.locator("input[name=image]").set_input_files(str(picture))
    expect(page.get_by_role("heading", name="No matches with these filters")).to_be_visible()
    page.get_by_label("Tags").fill("")
    page.get_by_label("Minimum match").select_option("90%")
    page.get_by_role("button", name="Search by address").click()
    expect(page.locator("[data-search-progress]")).to_have_text(re.compile(r"^\d+ matches, best \d+%$"))
    expect(page.get_by_role("heading", name="No matches with these filters")).to_have_count(0)
    scores = page.locator("[data-result-grid] .score").all_inner_texts()
    assert scores and all(int(score.removesuffix("% match")) >= 90 for score in scores), scores
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the results scroll sideways by {overflow}px"
    shot(page, "phone-search-results")
