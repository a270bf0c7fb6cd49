"""python manage.py rebuild_index [--reembed]"""
from django.core.management.base import BaseCommand, CommandParser

from search import services


class Command(BaseCommand):
    help = ("Rebuild the HNSW index from the vectors stored in the database and publish it. With --reembed, "
            "queue every image to be embedded again with the configured backbone instead (a worker must run).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reembed", action="store_true", help="embed every image again, then rebuild")

    def handle(self, *args: object, **options: object) -> None:
        if options["reembed"]:
            count = services.images_requeue_all()
            self.stdout.write(f"Queued {count} images to be embedded again; the index follows as they finish.")
            return
        meta = services.index_rebuild()
        self.stdout.write(f"Published snapshot {meta.snapshot_id}: {meta.count} vectors of {meta.backbone} "
                          f"({meta.backbone_version}), {meta.dim} dimensions, in {meta.publish_seconds:.2f} s.")
