"""python manage.py import_images PATH... [--recursive] [--wait] [--jobs N]"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from itertools import islice
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from tqdm import tqdm

from gallery.models import Image
from gallery.services import FileOnDisk, UploadResult, images_already_stored, images_upload

_STATE_QUERY_CHUNK = 2000
# Files stored in one transaction: few queries and one folder per batch, and little lost to a
# failure midway (memory is bounded by the service, which holds at most 64 MB of files).
_FILES_PER_BATCH = 256
# Batches handed to the store processes ahead of the one being reported: this many batches'
# files at most are in flight, whatever the size of the library.
_BATCHES_AHEAD_PER_JOB = 2
_STALL_HINT_SECONDS = 30


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    """The folder's files in name order, one folder's listing in memory at a time."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            yield Path(entry.path)
        elif recursive and entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), recursive)


def _files(paths: list[str], recursive: bool) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from _walk(path, recursive)
        else:
            yield path


def _batches(files: Iterable[Path]) -> Iterator[list[FileOnDisk]]:
    iterator = iter(files)
    while batch := list(islice(iterator, _FILES_PER_BATCH)):
        yield [FileOnDisk.at(path) for path in batch]


# Each file's outcome: (path, result) for a file read, or (path, image id) for one skipped.
Outcome = tuple[str, UploadResult | int]


def _store_batch(job: tuple[list[FileOnDisk], User | None]) -> list[Outcome]:
    """Skip the files stored by an earlier import (by name, size and modification time, then by
    hash where only the time differs), and store the rest."""
    files, owner = job
    stored = images_already_stored(files=files, owner=owner)
    new = [file for file in files if file.path not in stored]
    results = iter(images_upload(uploads=[(file.path.name, file) for file in new], owner=owner))
    return [(str(file.path), stored[file.path] if file.path in stored else next(results)) for file in files]


def _store_files(batches: Iterator[list[FileOnDisk]], owner: User | None,
                 jobs: int) -> Iterator[Outcome]:
    """Each file's outcome, in order; with several jobs, stored by that many processes at once."""
    if jobs == 1:
        for batch in batches:
            yield from _store_batch((batch, owner))
        return
    # Forked processes must not share this one's database connections; each opens its own.
    connections.close_all()
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        # Not Pool.imap, which would read the whole walk ahead: a bounded window of batches.
        pending: deque[AsyncResult[list[Outcome]]] = deque()
        for batch in batches:
            pending.append(pool.apply_async(_store_batch, ((batch, owner),)))
            if len(pending) >= jobs * _BATCHES_AHEAD_PER_JOB:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


class Command(BaseCommand):
    # The system checks look at URLs, views and templates, which an import never uses: they
    # would only lengthen its start.
    requires_system_checks: list[str] = []
    help = ("Import image files and folders through the same pipeline as the web upload: same checks, "
            "same de-duplication, same Celery tasks. A second run over the same files skips what the first "
            "stored. Exits with status 1 if any file was refused or failed.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="files or folders")
        parser.add_argument("--recursive", action="store_true", help="also import the folders inside folders")
        parser.add_argument("--wait", action="store_true", help="return once every stored file is indexed or failed")
        parser.add_argument("--owner", help="user name to own the imported images (default: none)")
        parser.add_argument("--timeout", type=float, help="with --wait, give up after this many seconds")
        parser.add_argument("--jobs", type=int, default=1,
                            help="processes that read, check and store files at once (default 1)")

    def handle(self, *args: object, **options: Any) -> None:
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user named {options['owner']!r}.")
        jobs = options["jobs"]
        if not isinstance(jobs, int) or jobs < 1:
            raise CommandError(f"--jobs must be at least 1, not {jobs}.")
        paths, recursive = list(options["paths"]), bool(options["recursive"])  # type: ignore[call-overload]
        # Counted by a first walk, which holds no list of paths, so that progress can show an ETA.
        total = sum(1 for _ in _files(paths, recursive))
        if not total:
            raise CommandError("No files to import.")
        progress = not options["verbosity"] == 0 and sys.stderr.isatty()
        counts: Counter[str] = Counter()
        # Ids only, in a compact array: a library of a million files fits in a few megabytes.
        waiting_for = array("q")
        with tqdm(total=total, desc="Storing", unit="file", disable=not progress) as bar:
            for path, outcome in _store_files(_batches(_files(paths, recursive)), owner, jobs):
                bar.update(1)
                if isinstance(outcome, int):
                    counts["skipped"] += 1
                    waiting_for.append(outcome)
                    continue
                counts[outcome.status] += 1
                if outcome.status == "accepted":
                    assert outcome.image is not None
                    waiting_for.append(outcome.image.pk)
                else:
                    self.stderr.write(f"{outcome.status}: {path}: {outcome.message}")
        states: Counter[str] = Counter()
        if options["wait"] and waiting_for:
            ids = list(waiting_for)
            states = self._wait(ids, options["timeout"], progress)  # type: ignore[arg-type]
            for name, code, error in self._failures(ids):
                self.stderr.write(f"failed: {name}: {error}" + (f" ({code})" if code else ""))
        summary = (f"{total} files: {counts['accepted']} stored"
                   + (f" ({states[Image.State.INDEXED]} indexed, {states[Image.State.FAILED]} failed)"
                      if options["wait"] else "")
                   + f", {counts['duplicate']} duplicates, {counts['refused']} refused"
                   + (f", {counts['skipped']} skipped as stored by an earlier import" if counts["skipped"] else "")
                   + ".")
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

    def _failures(self, ids: list[int]) -> Iterator[tuple[str, str, str]]:
        for start in range(0, len(ids), _STATE_QUERY_CHUNK):
            rows = Image.objects.filter(pk__in=ids[start:start + _STATE_QUERY_CHUNK], state=Image.State.FAILED)
            yield from rows.values_list("original_name", "error_code", "error")
