"""The job list in headless Chromium: progress bars move while you watch."""
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from playwright.sync_api import expect

from jobs import services
from jobs.models import Job
from tests.test_browser import browser, shot, site  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser]


def in_thread(work) -> None:
    """Database work while Playwright's event loop runs in this thread (where Django refuses it)."""
    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)


@pytest.fixture
def running(transactional_db) -> services.JobRun:
    """Set up before the browser, whose event loop then stops this thread from querying."""
    get_user_model().objects.create_superuser("root", password="root-password")
    job = Job.objects.create(kind=Job.Kind.REINDEX, claim_token="t")
    run = services.job_claim(job_id=job.pk, token="t")
    assert run is not None, "the job is claimed with the token it was sent with"
    run.step(total=10, done=1, phase="building")
    return run


def test_the_progress_bar_moves_while_you_watch_and_the_list_shows_the_end(running, site, browser):  # noqa: F811
    run, job = running, running.job
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/admin/login/?next=/admin/jobs/job/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("root-password")
    page.get_by_role("button", name="Log in").click()
    bar = page.locator(f".job-progress[data-job='{job.pk}'] progress")
    expect(bar).to_have_attribute("value", "10")
    page.evaluate("window.notReloaded = true")

    in_thread(lambda: run.step(done=6))
    expect(bar).to_have_attribute("value", "60", timeout=10_000)
    expect(page.locator(f".job-progress[data-job='{job.pk}'] .job-count")).to_have_text("6 / 10")
    assert page.evaluate("window.notReloaded") is True
    shot(page, "admin-jobs")

    in_thread(lambda: run.finish(summary="Generation in service."))
    expect(page.locator("#result_list")).to_contain_text("Succeeded", timeout=10_000)
    expect(page.locator("#result_list")).to_contain_text("Generation in service.")
