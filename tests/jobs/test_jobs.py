from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.models import Job
from search import services as search_services
from tests import images
from tests.conftest import store_indexed

CHANGELIST = reverse("admin:jobs_job_changelist")


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-password"))
    return client


def running_job(**fields) -> tuple[Job, services.JobRun]:
    job = Job.objects.create(kind=Job.Kind.REINDEX, claim_token="t1", **fields)
    return job, services.job_claim(job_id=job.pk, token="t1")


class TestProgress:
    def test_steps_record_progress_and_an_eta(self, db):
        job, run = running_job()
        Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(seconds=30))
        run.step(total=100, done=25, phase="building", checkpoint={"after": 7})
        job.refresh_from_db()
        assert (job.state, job.percent, job.phase, job.checkpoint) == (Job.State.RUNNING, 25, "building", {"after": 7})
        assert timedelta(seconds=85) < job.eta < timedelta(seconds=95)

    def test_a_job_sent_with_another_token_is_not_run(self, db):
        job = Job.objects.create(kind=Job.Kind.REINDEX, claim_token="right")
        assert services.job_claim(job_id=job.pk, token="wrong") is None

    def test_a_cancelled_running_job_stops_at_its_next_step(self, db):
        job, run = running_job()
        assert services.job_cancel(job=job)
        with pytest.raises(services.JobStopped, match="was cancelled"):
            run.step(done=1)
        run.fail(reason="stopped")
        job.refresh_from_db()
        assert job.state == Job.State.CANCELLED and job.finished_at is not None

    def test_a_finished_job_cannot_be_cancelled(self, db):
        job = Job.objects.create(kind=Job.Kind.REINDEX, state=Job.State.SUCCEEDED)
        assert not services.job_cancel(job=job)

    def test_a_silent_job_is_resumed_with_a_new_token_and_the_old_run_stops(self, db,
                                                                          django_capture_on_commit_callbacks):
        job, old_run = running_job()
        Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=30))
        with django_capture_on_commit_callbacks() as sent:
            assert [j.pk for j in services.jobs_resume_stalled(silent_for=timedelta(minutes=10))] == [job.pk]
        assert len(sent) == 1
        with pytest.raises(services.JobStopped, match="held by another run"):
            old_run.step(done=2)
        job.refresh_from_db()
        assert services.job_claim(job_id=job.pk, token=job.claim_token) is not None

    def test_a_job_that_reports_is_not_resumed(self, db):
        running_job()
        assert services.jobs_resume_stalled(silent_for=timedelta(minutes=10)) == []

    def test_an_unknown_kind_cannot_start(self, db):
        with pytest.raises(ValueError, match="no runner for jobs of kind 'nonsense'"):
            services.job_start(kind="nonsense")


class TestJobAdmin:
    def test_the_list_shows_progress_bars_that_poll_for_running_jobs(self, admin_client):
        job, run = running_job()
        run.step(total=10, done=4)
        page = admin_client.get(CHANGELIST).content.decode()
        assert f'data-job="{job.pk}" data-active="1"><progress max="100" value="40"' in page
        assert reverse("admin:jobs_job_progress") in page
        reply = admin_client.get(reverse("admin:jobs_job_progress"), {"ids": str(job.pk)}).json()
        assert reply["jobs"][0] | {"eta": ""} == {
            "id": job.pk, "state": "running", "state_label": "Running", "active": True, "percent": 40, "done": 4,
            "total": 10, "failed": 0, "phase": "", "eta": "", "last_error": ""}

    def test_progress_refuses_ids_that_are_not_numbers(self, admin_client):
        assert admin_client.get(reverse("admin:jobs_job_progress"), {"ids": "1,x"}).status_code == 400

    def test_cancel_action(self, admin_client):
        job = Job.objects.create(kind=Job.Kind.REINDEX)
        admin_client.post(CHANGELIST, {"action": "cancel", "_selected_action": [job.pk]})
        job.refresh_from_db()
        assert job.state == Job.State.CANCELLED

    def test_a_reindex_is_started_from_the_admin(self, admin_client, clean_index):
        page = admin_client.get(reverse("admin:jobs_job_reindex"))
        assert page.status_code == 200 and "efficientnet_lite0" in page.content.decode()
        reply = admin_client.post(reverse("admin:jobs_job_reindex"),
                                  {"backbone": "efficientnet_lite0", "m": 12, "ef_construction": 80})
        assert reply.status_code == 302
        job = Job.objects.get(kind=Job.Kind.REINDEX)
        assert job.params["m"] == 12 and job.started_by.username == "root"
        again = admin_client.post(reverse("admin:jobs_job_reindex"),
                                  {"backbone": "efficientnet_lite0", "m": 12, "ef_construction": 80})
        assert "already queued; cancel it first" in again.content.decode()

    def test_upkeep_runs_from_the_admin_and_is_recorded(self, admin_client, clean_index):
        store_indexed(images.jpeg(1))
        reply = admin_client.post(reverse("admin:jobs_job_upkeep"), follow=True)
        assert "stuck images queued again" in reply.content.decode()
        assert Job.objects.get(kind=Job.Kind.UPKEEP).state == Job.State.SUCCEEDED

    def test_the_health_page_is_for_staff_only(self, client, db, clean_index):
        assert client.get(reverse("admin:jobs_job_health")).status_code == 302

    def test_staff_without_the_job_permissions_can_neither_look_nor_start(self, client, staff_user, clean_index):
        client.force_login(staff_user)
        for name in ("admin:jobs_job_health", "admin:jobs_job_reindex", "admin:jobs_job_progress"):
            assert client.get(reverse(name)).status_code == 403, name
        assert client.post(reverse("admin:jobs_job_upkeep")).status_code == 403
        assert not Job.objects.exists()

    def test_the_health_page_shows_the_index(self, admin_client, clean_index):
        for i in range(3):
            store_indexed(images.jpeg(i), f"{i}.jpg")
        search_services.index_sync()
        page = admin_client.get(reverse("admin:jobs_job_health")).content.decode()
        for text in ("Vectors in the index", "efficientnet_lite0", "M=16, ef_construction=200, ef_search=256",
                     "top-1 is itself for 100.0%, recall@10 1.000 against exact search (3 sampled)"):
            assert text in page
