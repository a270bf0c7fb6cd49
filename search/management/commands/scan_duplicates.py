"""python manage.py scan_duplicates [--threshold T] [--wait]"""
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.commands.wait_job import wait_and_report
from jobs.models import Job
from search.duplicates import ScanRefused, duplicate_scan_start


class Command(BaseCommand):
    help = ("Group the images that are alike above a similarity threshold, in the background (a worker must run), "
            "for review on the admin's Near-duplicates page.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--threshold", type=float, default=0.95, help="least cosine similarity (0.5 to 1)")
        parser.add_argument("--wait", action="store_true", help="show progress and return when the scan ends")
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            job = duplicate_scan_start(threshold=float(options["threshold"]))
        except ScanRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Started {job}.")
        if options["wait"] and wait_and_report(self, job, timeout=float(options["timeout"])).state != (
                Job.State.SUCCEEDED):
            raise CommandError(f"{job} did not succeed")
