"""python manage.py wait_job ID [--timeout S]"""
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.models import Job


def wait_and_report(command: BaseCommand, job: Job, *, timeout: float) -> Job:
    """Print the job's progress until it ends, then its summary or error."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        job.refresh_from_db()
        line = f"{job.get_state_display()}: {job.phase or '-'} {job.done}/{job.total}"
        if line != shown:
            command.stderr.write(line)
            shown = line
        if not job.is_active:
            break
        if time.monotonic() > deadline:
            raise CommandError(f"{job} is still {job.get_state_display().lower()} after {timeout:.0f} s")
        time.sleep(0.5)
    if job.state == Job.State.SUCCEEDED:
        command.stdout.write(job.summary)
    else:
        command.stdout.write(f"{job} {job.get_state_display().lower()}: {job.last_error}")
    return job


class Command(BaseCommand):
    help = "Wait for a background job to end, showing its progress; exits with status 1 unless it succeeded."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--timeout", type=float, default=24 * 3600.0)

    def handle(self, *args: object, **options: Any) -> None:
        job = Job.objects.filter(pk=options["job_id"]).first()
        if job is None:
            raise CommandError(f"There is no job #{options['job_id']}.")
        if wait_and_report(self, job, timeout=float(options["timeout"])).state != Job.State.SUCCEEDED:
            raise CommandError(f"{job} did not succeed")
