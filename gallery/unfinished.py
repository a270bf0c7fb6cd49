"""Originals written by an upload whose rows are not committed yet.

The store step writes a batch's originals before it inserts their rows, in one transaction, so
that a refused or failed batch can delete what it wrote. A process killed in between (an import
SIGKILLed halfway, a web server stopped) runs no clean-up: its files would stay in the media
storage with nothing naming them. So before writing, a batch lists the names it is about to
write in a small file under ``unfinished/``, and removes that list once its rows are committed
or its files deleted. Upkeep (``sweep_unfinished``) deletes, for each list older than any live
batch can be, the files that no row names, then the list. It works the same on a local disk
and in an object store shared by several hosts, and reads only the lists, never the whole
media storage.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from config.object_store import STORE_ERRORS
from gallery.copies import delete_files
from gallery.models import Image

_MISSING_OR_UNREACHABLE: tuple[type[Exception], ...] = (FileNotFoundError, *STORE_ERRORS)

log = logging.getLogger(__name__)

_FOLDER = "unfinished"
# A batch holds at most 256 files or 64 MB; one that has not committed after this long is dead.
UNFINISHED_AFTER = timedelta(hours=1)


def unfinished_mark(*, names: list[str]) -> str:
    """Record the files a batch is about to write; the list's own name, for ``unfinished_clear``."""
    return default_storage.save(f"{_FOLDER}/{uuid.uuid4().hex}.txt", ContentFile("\n".join(names).encode()))


def unfinished_clear(*, lists: list[str]) -> None:
    """The batch is over: its rows are committed, or its files deleted."""
    delete_files(lists)


def sweep_unfinished(*, older_than: timedelta = UNFINISHED_AFTER) -> int:
    """Delete the originals of batches that died before their rows were committed; how many."""
    try:
        _, lists = default_storage.listdir(_FOLDER)
    except _MISSING_OR_UNREACHABLE:
        return 0
    cutoff = timezone.now() - older_than
    removed = 0
    for list_name in lists:
        path = f"{_FOLDER}/{list_name}"
        try:
            if default_storage.get_modified_time(path) > cutoff:
                continue  # its batch may still be running
            with default_storage.open(path, "rb") as opened:
                names = opened.read().decode().split()
        except _MISSING_OR_UNREACHABLE:
            log.warning("Could not read the list of unfinished uploads %s", path, exc_info=True)
            continue
        named = set(Image.objects.filter(original__in=names).values_list("original", flat=True))
        # A list names every file of its batch, written or not when the batch died.
        stray = [name for name in names if name not in named and default_storage.exists(name)]
        try:
            for name in stray:
                default_storage.delete(name)
            default_storage.delete(path)  # last: a list is kept until all its strays are gone
        except STORE_ERRORS:
            log.warning("Could not delete the files of an unfinished upload, listed in %s", path, exc_info=True)
            continue
        removed += len(stray)
    return removed
