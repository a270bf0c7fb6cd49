from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.models import Job

CHANGELIST = reverse("admin:jobs_job_changelist")


def running_job(**fields) -> tuple[Job, services.JobRun]:
    job = Job.objects.create(kind=Job.Kind.REINDEX, claim_token="t1", **fields)
    run = services.job_claim(job_id=job.pk, token="t1")
    assert run is not None, "the job is claimed with the token it was sent with"
    return job, run


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

    def test_staff_without_the_job_permissions_cannot_follow_progress(self, client, staff_user):
        client.force_login(staff_user)
        assert client.get(reverse("admin:jobs_job_progress")).status_code == 403


class TestRunners:
    def test_only_a_kind_of_job_gets_a_runner(self):
        with pytest.raises(ValueError, match="'nonsense' is not a kind of job"):
            services.job_runner_register(kind="nonsense", runner=lambda run: "")

    def test_a_job_whose_kind_has_no_runner_here_fails_and_says_so(self, db, monkeypatch):
        monkeypatch.delitem(services._runners, Job.Kind.CLUSTERS)
        job = Job.objects.create(kind=Job.Kind.CLUSTERS, claim_token="t1")
        services.job_execute(job_id=job.pk, token="t1")
        job.refresh_from_db()
        assert job.state == Job.State.FAILED
        assert job.last_error == "No runner for jobs of kind 'clusters' is registered in this worker."
