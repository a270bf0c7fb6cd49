"""Writes of background jobs: starting, claiming, reporting progress, cancelling and resuming.

A job runs in one Celery task (``jobs.tasks.run_job``) that calls the runner registered for its
kind. The runner reports after each batch through ``JobRun.step``, which records progress and a
checkpoint, and stops the run when the job was cancelled or taken over by another worker. This
app knows none of the others: each registers the runners of its kinds as it starts
(``AppConfig.ready``, through ``job_runner_register``).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job
from jobs.tasks import run_job

log = logging.getLogger(__name__)

class JobStopped(Exception):
    """The run must stop: the job was cancelled, or another worker holds it now."""


class JobRun:
    """The claim one worker holds on a job while it runs it."""

    def __init__(self, job: Job, token: str) -> None:
        self.job = job
        self.token = token

    def _mine(self) -> Any:
        return Job.objects.filter(pk=self.job.pk, claim_token=self.token, state=Job.State.RUNNING)

    def step(self, *, done: int | None = None, total: int | None = None, failed: int | None = None,
             phase: str | None = None, checkpoint: dict | None = None) -> None:
        """Record progress (and what a resumed run starts from); raise JobStopped if the run must end."""
        changes: dict[str, Any] = {"heartbeat_at": timezone.now()}
        for name, value in (("done", done), ("total", total), ("failed", failed), ("phase", phase),
                            ("checkpoint", checkpoint)):
            if value is not None:
                changes[name] = value
                setattr(self.job, name, value)
        if not self._mine().update(**changes):
            raise JobStopped(f"{self.job} is held by another run now")
        if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            raise JobStopped(f"{self.job} was cancelled")

    def finish(self, *, summary: str) -> bool:
        return bool(self._mine().update(state=Job.State.SUCCEEDED, summary=summary[:4000], finished_at=timezone.now(),
                                        claim_token=""))

    def fail(self, *, reason: str) -> bool:
        state = Job.State.CANCELLED if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists() \
            else Job.State.FAILED
        return bool(self._mine().update(state=state, last_error=reason[:4000], finished_at=timezone.now(),
                                        claim_token=""))


# The function that does a kind of job: it reports through the run and returns the job's summary.
Runner = Callable[[JobRun], str]
_runners: dict[str, Runner] = {}


def job_runner_register(*, kind: str, runner: Runner) -> None:
    """Name the function that does jobs of ``kind``; the app that owns the kind calls it as it starts."""
    if kind not in Job.Kind.values:
        raise ValueError(f"{kind!r} is not a kind of job")
    _runners[kind] = runner


def _queue_run(job_id: int, token: str) -> None:
    # robust: a broker that is down leaves the job queued; upkeep sends it again.
    transaction.on_commit(lambda: run_job.delay(job_id, token), robust=True)


def job_start(*, kind: str, params: dict | None = None, started_by: User | AnonymousUser | None = None
              ) -> Job:
    """Record a job and send it to a worker once the transaction commits."""
    if kind not in _runners:
        raise ValueError(f"there is no runner for jobs of kind {str(kind)!r}")
    user = started_by if started_by is not None and started_by.is_authenticated else None
    with transaction.atomic():
        token = uuid.uuid4().hex
        job = Job.objects.create(kind=kind, params=params or {}, started_by=user, claim_token=token)
        _queue_run(job.pk, token)
    return job


def job_claim(*, job_id: int, token: str) -> JobRun | None:
    """Take the job to run it, if this token was the one it was sent with (or resumed with)."""
    now = timezone.now()
    claimed = Job.objects.filter(Q(state=Job.State.QUEUED) | Q(state=Job.State.RUNNING), pk=job_id,
                                 claim_token=token, cancel_requested=False).update(state=Job.State.RUNNING,
                                                                                   heartbeat_at=now)
    if not claimed:
        return None
    Job.objects.filter(pk=job_id, started_at__isnull=True).update(started_at=now)
    return JobRun(Job.objects.get(pk=job_id), token)


def job_execute(*, job_id: int, token: str) -> None:
    """Run a job with the runner for its kind. A stopped run leaves the job as the stopper left it."""
    run = job_claim(job_id=job_id, token=token)
    if run is None:
        return
    runner = _runners.get(run.job.kind)
    if runner is None:
        run.fail(reason=f"No runner for jobs of kind {run.job.kind!r} is registered in this worker.")
        return
    try:
        summary = runner(run)
    except JobStopped as stop:
        log.info("%s", stop)
        run.fail(reason=str(stop))
        return
    except Exception as exc:
        log.exception("%s failed", run.job)
        run.fail(reason=f"{type(exc).__name__}: {exc}")
        return
    run.finish(summary=summary)


def job_cancel(*, job: Job) -> bool:
    """Ask a job to stop after its current batch; a job that has not started stops at once."""
    if not job.is_active:
        return False
    Job.objects.filter(pk=job.pk, state__in=Job.ACTIVE_STATES).update(cancel_requested=True)
    Job.objects.filter(pk=job.pk, state=Job.State.QUEUED).update(
        state=Job.State.CANCELLED, finished_at=timezone.now(), last_error="Cancelled before it started.",
        claim_token="")
    return True


def jobs_resume_stalled(*, silent_for: timedelta) -> list[Job]:
    """Send again every job whose worker has not reported for ``silent_for`` (killed, or its task lost).

    Each gets a new claim token, so that the lost run, if it was only slow, stops at its next step.
    """
    cutoff = timezone.now() - silent_for
    stalled = Job.objects.filter(
        Q(state=Job.State.RUNNING, heartbeat_at__lt=cutoff) | Q(state=Job.State.QUEUED, created_at__lt=cutoff),
        cancel_requested=False,
    )
    resumed = []
    for job in stalled:
        token = uuid.uuid4().hex
        with transaction.atomic():
            if Job.objects.filter(pk=job.pk, claim_token=job.claim_token, state=job.state).update(
                    claim_token=token, heartbeat_at=timezone.now()):
                _queue_run(job.pk, token)
                resumed.append(job)
    for job in resumed:
        log.warning("Resuming %s, whose worker stopped reporting", job)
    return resumed
