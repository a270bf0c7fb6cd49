"""Periodic upkeep (Celery beat, or ``python manage.py upkeep``): repair the index against the
database, send again the images whose embedding got stuck or that have no vector of the model in
use, resume background jobs whose worker died, delete the originals of uploads that died
before their rows were committed, and queue the display copies that indexed images lack. Each
run is recorded as an upkeep job."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from gallery import copies
from gallery.unfinished import sweep_unfinished
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun
from search import index_writer, services


def upkeep_run(run: JobRun) -> str:
    """The runner of upkeep jobs; returns what it did."""
    run.step(total=3, done=0, phase="reconciling the index")
    stray = services.embeddings_purge_stray()
    repair = index_writer.index_repair()
    run.step(done=1, phase="re-queueing stuck images")
    requeued = services.images_requeue_stuck(older_than=timedelta(seconds=settings.LOOKALIKE_STUCK_AFTER_SECONDS))
    unembedded = services.images_requeue_unembedded()
    run.step(done=2, phase="resuming stalled jobs")
    resumed = job_services.jobs_resume_stalled(silent_for=timedelta(seconds=settings.LOOKALIKE_JOB_STALL_SECONDS))
    swept = sweep_unfinished()
    if lacking_display := copies.display_copies_missing():
        copies.queue_display_copies()
    run.step(done=3, phase="done")
    index = (f"index rebuilt from the database ({repair.rebuilt})" if repair.rebuilt else
             f"index: {repair.reconciled.added} missing vectors added, {repair.reconciled.removed} stale removed")
    strays = f"; {stray} vectors of no index in use removed" if stray else ""
    without = f"; {unembedded} indexed images without a vector of the model in use queued again" if unembedded else ""
    unfinished = f"; {swept} originals of uploads that died before they were stored removed" if swept else ""
    display = f"; the display copies of {lacking_display} indexed images queued" if lacking_display else ""
    return (f"{index}{strays}; {requeued} stuck images queued again{without}; "
            f"{len(resumed)} stalled jobs resumed{': ' + ', '.join(map(str, resumed)) if resumed else ''}"
            f"{unfinished}{display}.")


def upkeep_now() -> Job:
    """Run upkeep in this process and record it as a job."""
    token = uuid.uuid4().hex
    job = Job.objects.create(kind=Job.Kind.UPKEEP, state=Job.State.RUNNING, claim_token=token,
                             started_at=timezone.now(), heartbeat_at=timezone.now())
    job_services.job_execute(job_id=job.pk, token=token)
    job.refresh_from_db()
    return job
