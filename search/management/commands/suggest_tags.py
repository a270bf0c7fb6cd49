"""python manage.py suggest_tags [--wait]"""
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.commands.wait_job import wait_and_report
from jobs.models import Job
from search.tag_suggestions import tag_suggestions_start


class Command(BaseCommand):
    help = ("Suggest tags for every untagged image from its most similar tagged images, in the background "
            "(a worker must run), for review in the admin (filter: has suggestions).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--wait", action="store_true", help="show progress and return when the job ends")
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")

    def handle(self, *args: object, **options: Any) -> None:
        job = tag_suggestions_start()
        self.stdout.write(f"Started {job}.")
        if options["wait"] and wait_and_report(self, job, timeout=float(options["timeout"])).state != (
                Job.State.SUCCEEDED):
            raise CommandError(f"{job} did not succeed")
