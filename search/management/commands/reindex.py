"""python manage.py reindex [--backbone NAME] [--m M] [--ef-construction E] [--wait]"""
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.backbones import BACKBONES
from jobs.management.commands.wait_job import wait_and_report
from jobs.models import Job
from search.reindex import DEFAULT_BATCH_SIZE, ReindexRefused, reindex_start


class Command(BaseCommand):
    help = ("Build a new index in the background (a worker must run) while the current one keeps answering "
            "searches, and put it in service once it is complete and checked. With another backbone, every "
            "image is embedded again first.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backbone", choices=sorted(BACKBONES),
                            help="backbone of the new index (default: the LOOKALIKE_BACKBONE setting)")
        parser.add_argument("--m", type=int, help="HNSW graph degree (default: the current index's)")
        parser.add_argument("--ef-construction", type=int,
                            help="HNSW build-time search width (default: the current index's)")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                            help="images embedded or added per step; progress is saved between steps")
        parser.add_argument("--wait", action="store_true", help="show progress and return when the job ends")
        parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to wait at most")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            job = reindex_start(backbone=options["backbone"], m=options["m"],
                                ef_construction=options["ef_construction"], batch_size=options["batch_size"])
        except ReindexRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Started {job} ({job.params['backbone']}, M={job.params['m']}, "
                          f"ef_construction={job.params['ef_construction']}); follow it in the admin "
                          "under Background jobs.")
        if options["wait"] and wait_and_report(self, job, timeout=float(options["timeout"])).state != (
                Job.State.SUCCEEDED):
            raise CommandError(f"{job} did not succeed")
