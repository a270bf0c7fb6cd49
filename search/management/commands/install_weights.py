"""python manage.py install_weights BACKBONE FILE [--ignore-checksum]"""
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.backbones import BACKBONES
from core.embedding import WeightsRejected, install_weights
from search import runtime


class Command(BaseCommand):
    help = ("Install a torchvision weights file downloaded on another machine, for a backbone that this "
            "machine cannot download (resnet50, efficientnet_b0, mobilenet_v3_large).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("backbone", choices=sorted(BACKBONES))
        parser.add_argument("file", type=Path, help="the .pth file as published by torchvision")
        parser.add_argument("--ignore-checksum", action="store_true",
                            help="accept a file whose SHA-256 differs from the published one (a re-saved copy)")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            target = install_weights(options["backbone"], options["file"], runtime.weights_dir(),
                                     ignore_checksum=bool(options["ignore_checksum"]))
        except WeightsRejected as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Installed {options['backbone']} weights at {target}.")
