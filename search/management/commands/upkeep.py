"""python manage.py upkeep"""
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs.models import Job
from search.upkeep import upkeep_now


class Command(BaseCommand):
    help = ("Do now what Celery beat does periodically: repair the index against the database, queue again the "
            "images stuck in queued or embedding, and resume background jobs whose worker died. The run is "
            "recorded under Background jobs.")

    def handle(self, *args: object, **options: Any) -> None:
        job = upkeep_now()
        if job.state != Job.State.SUCCEEDED:
            raise CommandError(f"Upkeep failed: {job.last_error}")
        self.stdout.write(job.summary)
