"""python manage.py rebuild_index [--reembed]"""
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from search import index_writer


class Command(BaseCommand):
    help = ("Rebuild the index in service from the vectors stored in the database and publish it at once. With "
            "--reembed, start `reindex` instead: every image is embedded again in the background while search "
            "goes on.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reembed", action="store_true", help="same as `python manage.py reindex`")

    def handle(self, *args: object, **options: Any) -> None:
        if options["reembed"]:
            call_command("reindex", stdout=self.stdout, stderr=self.stderr)
            return
        meta = index_writer.index_rebuild()
        self.stdout.write(f"Published snapshot {meta.snapshot_id}: {meta.count} vectors of {meta.backbone} "
                          f"({meta.backbone_version}), {meta.dim} dimensions, in {meta.publish_seconds:.2f} s.")
