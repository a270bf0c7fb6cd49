"""python manage.py search_image FILE... [--k N] [--json]"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.imaging import ImageRejected, decode_image
from gallery.uploads import read_limited
from search import runtime, selectors

_BATCH = 32


class Command(BaseCommand):
    help = ("Search the gallery with one or more pictures, loading the model once. With --json, print one "
            "JSON object a line: {\"query\", \"results\": [{\"id\", \"original_name\", \"score\"}]} or "
            "{\"query\", \"error\"}.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", help="pictures to search with (they are not stored)")
        parser.add_argument("--k", type=int, default=10, help="results per picture (default 10)")
        parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    def handle(self, *args: object, **options: Any) -> None:
        k = int(options["k"])
        if not 1 <= k <= settings.LOOKALIKE_SEARCH_MAX_K:
            raise CommandError(f"--k must be between 1 and {settings.LOOKALIKE_SEARCH_MAX_K}.")
        try:
            runtime.embedder()
        except Exception as exc:  # missing weights or a bad setting: say so before reading any file
            raise CommandError(str(exc)) from exc
        files: list[str] = list(options["files"])
        for start in range(0, len(files), _BATCH):
            batch = files[start:start + _BATCH]
            decoded, errors = {}, {}
            for name in batch:
                try:
                    with Path(name).open("rb") as source:
                        data = read_limited(source, settings.LOOKALIKE_MAX_UPLOAD_BYTES)
                    decoded[name] = decode_image(data, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS).image
                except ImageRejected as rejection:
                    errors[name] = rejection.message
                except OSError as exc:
                    errors[name] = f"cannot be read: {exc.strerror}"
            try:
                found = selectors.similar_to_pictures(list(decoded.values()), k=k)
            except selectors.SearchUnavailable as exc:
                raise CommandError(str(exc)) from exc
            answers = dict(zip(decoded, found, strict=True))
            for name in batch:
                self._print(name, answers.get(name), errors.get(name), bool(options["json"]))

    def _print(self, name: str, results: list[selectors.SimilarImage] | None, error: str | None, as_json: bool) -> None:
        if as_json:
            row: dict[str, object] = {"query": name}
            if error is not None:
                row["error"] = error
            else:
                row["results"] = [{"id": r.image.pk, "original_name": r.image.original_name,
                                   "score": round(r.score, 4)} for r in results or []]
            self.stdout.write(json.dumps(row))
            return
        self.stdout.write(name)
        if error is not None:
            self.stdout.write(f"  error: {error}")
            return
        for line in self._table(results or []):
            self.stdout.write(line)

    def _table(self, results: list[selectors.SimilarImage]) -> Iterator[str]:
        if not results:
            yield "  no matches"
        for rank, result in enumerate(results, 1):
            yield f"  {rank:>3}. {result.score:6.3f}  #{result.image.pk:<8} {result.image.original_name}"
