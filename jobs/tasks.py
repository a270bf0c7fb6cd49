"""Celery tasks of background jobs: each takes an id and calls a service (imported inside the task:
the service imports this module to send it)."""
from celery import shared_task


@shared_task(name="jobs.run_job")
def run_job(job_id: int, token: str) -> None:
    from jobs.services import job_execute

    job_execute(job_id=job_id, token=token)
