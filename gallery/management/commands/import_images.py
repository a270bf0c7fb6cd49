"""python manage.py import_images PATH... [--recursive] [--wait] [--jobs N]"""
from __future__ import annotations

import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from tqdm import tqdm

from gallery.models import Image
from gallery.services import UploadResult, images_upload

_STATE_QUERY_CHUNK = 2000
# Files stored in one transaction: few round trips per file, and little lost to a failure midway.
_FILES_PER_BATCH = 32
_STALL_HINT_SECONDS = 30


def _files(paths: list[str], recursive: bool) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            children = path.rglob("*") if recursive else path.iterdir()
            yield from sorted(p for p in children if p.is_file() and not p.name.startswith("."))
        else:
            yield path


class _FileOnDisk:
    """A file opened each time the upload reads it, from the start: one that cannot be opened is
    refused like one that cannot be read, and a batch holds no file open."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, size: int, /) -> bytes:
        with self.path.open("rb") as source:
            return source.read(size)

    def seek(self, offset: int, /) -> int:
        if offset:
            raise ValueError("A file on disk is only ever read from the start.")
        return 0


def _store_batch(job: tuple[list[Path], object]) -> list[UploadResult]:
    paths, owner = job
    return images_upload(uploads=[(path.name, _FileOnDisk(path)) for path in paths], owner=owner)


def _store_files(files: list[Path], owner: object, jobs: int) -> Iterator[UploadResult]:
    """Each file's result, in order; with several jobs, stored by that many processes at once."""
    batches = [(files[start:start + _FILES_PER_BATCH], owner) for start in range(0, len(files), _FILES_PER_BATCH)]
    if jobs == 1:
        for batch in batches:
            yield from _store_batch(batch)
        return
    # Forked processes must not share this one's database connections; each opens its own.
    connections.close_all()
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for results in pool.imap(_store_batch, batches):
            yield from results


class Command(BaseCommand):
    help = ("Import image files and folders through the same pipeline as the web upload: same validation, "
            "same de-duplication, same Celery tasks. Exits with status 1 if any file was refused or failed.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="files or folders")
        parser.add_argument("--recursive", action="store_true", help="also import the folders inside folders")
        parser.add_argument("--wait", action="store_true", help="return once every stored file is indexed or failed")
        parser.add_argument("--owner", help="user name to own the imported images (default: none)")
        parser.add_argument("--timeout", type=float, help="with --wait, give up after this many seconds")
        parser.add_argument("--jobs", type=int, default=1,
                            help="processes that read, check and store files at once (default 1)")

    def handle(self, *args: object, **options: object) -> None:
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user named {options['owner']!r}.")
        jobs = options["jobs"]
        if not isinstance(jobs, int) or jobs < 1:
            raise CommandError(f"--jobs must be at least 1, not {jobs}.")
        files = list(_files(options["paths"], bool(options["recursive"])))
        if not files:
            raise CommandError("No files to import.")
        progress = not options["verbosity"] == 0 and sys.stderr.isatty()
        results = tqdm(_store_files(files, owner, jobs), total=len(files), desc="Storing", unit="file",
                       disable=not progress)
        outcomes = list(zip(files, results, strict=True))
        for path, result in outcomes:
            if result.status != "accepted":
                self.stderr.write(f"{result.status}: {path}: {result.message}")
        accepted = {result.image.pk: path for path, result in outcomes if result.status == "accepted"}
        states: Counter[str] = Counter({Image.State.QUEUED: len(accepted)})
        if options["wait"] and accepted:
            states = self._wait(list(accepted), options["timeout"], progress)
            for image_id, error in self._failures(list(accepted)):
                self.stderr.write(f"failed: {accepted[image_id]}: {error}")
        counts = Counter(result.status for _, result in outcomes)
        summary = (f"{len(files)} files: {counts['accepted']} stored"
                   + (f" ({states[Image.State.INDEXED]} indexed, {states[Image.State.FAILED]} failed)"
                      if options["wait"] else "")
                   + f", {counts['duplicate']} duplicates, {counts['refused']} refused.")
        self.stdout.write(summary)
        if counts["refused"] or states[Image.State.FAILED]:
            sys.exit(1)

    def _states(self, ids: list[int]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for start in range(0, len(ids), _STATE_QUERY_CHUNK):
            chunk = ids[start:start + _STATE_QUERY_CHUNK]
            counts.update(Image.objects.filter(pk__in=chunk).values_list("state", flat=True))
        return counts

    def _wait(self, ids: list[int], timeout: float | None, progress: bool) -> Counter[str]:
        started = last_change = time.monotonic()
        done = 0
        hinted = False
        with tqdm(total=len(ids), desc="Indexing", unit="image", disable=not progress) as bar:
            while True:
                states = self._states(ids)
                settled = states[Image.State.INDEXED] + states[Image.State.FAILED]
                if settled != done:
                    bar.update(settled - done)
                    done, last_change = settled, time.monotonic()
                if not states[Image.State.QUEUED] and not states[Image.State.EMBEDDING]:
                    return states
                now = time.monotonic()
                if not hinted and now - last_change > _STALL_HINT_SECONDS:
                    self.stderr.write("No image has finished for 30 s. "
                                      "Is a worker running (`celery -A config worker`)?")
                    hinted = True
                if timeout is not None and now - started > timeout:
                    raise CommandError(f"Gave up after {timeout:g} s: {settled} of {len(ids)} images finished; "
                                       "the rest stay queued and will be indexed when a worker takes them.")
                time.sleep(0.5)

    def _failures(self, ids: list[int]) -> Iterator[tuple[int, str]]:
        for start in range(0, len(ids), _STATE_QUERY_CHUNK):
            rows = Image.objects.filter(pk__in=ids[start:start + _STATE_QUERY_CHUNK], state=Image.State.FAILED)
            yield from rows.values_list("pk", "error")
