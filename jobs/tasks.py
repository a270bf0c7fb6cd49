"""Celery tasks of background jobs: each takes an id and calls a service."""
from celery import shared_task

from jobs import services


@shared_task(name="jobs.run_job")
def run_job(job_id: int, token: str) -> None:
    services.job_execute(job_id=job_id, token=token)
