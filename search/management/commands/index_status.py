"""python manage.py index_status [--sample N] [--json]"""
import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from search.health import index_health


class Command(BaseCommand):
    help = ("Show the index in service: backbone, dimension, vectors in the database and in the index, deleted "
            "but not purged, last snapshot, lag behind the database, HNSW parameters, a recall self-check on a "
            "sample and the search latency of the last queries.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sample", type=int, default=100, help="images searched for the recall check (0: skip)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        if options["sample"] < 0:
            raise CommandError("--sample must be 0 or more.")
        health = index_health(sample=options["sample"])
        if options["json"]:
            data = asdict(health)
            data["reindex"] = str(health.reindex) if health.reindex else None
            self.stdout.write(json.dumps(data, default=str))
            return
        width = max(len(label) for label, _ in health.rows())
        for label, value in health.rows():
            self.stdout.write(f"{label:<{width}}  {value}")
