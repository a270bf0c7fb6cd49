"""Writes of the gallery: storing uploads and deleting images. The web upload, the search page's
"add to the gallery", the API and ``import_images`` all go through ``images_upload``, so they
validate and de-duplicate alike."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import unicodedata
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from config.object_store import STORE_ERRORS
from core.imaging import ImageRejected, read_header
from gallery.copies import delete_files
from gallery.models import TAG_NAME_MAX_LENGTH, DuplicateGroup, Image, Tag
from gallery.selectors import image_list_visible
from gallery.unfinished import unfinished_clear, unfinished_mark
from gallery.uploads import Readable, file_too_large_message
from search import changelog
from search.models import IndexChange
from search.queues import queue_embeddings, queue_index_sync

log = logging.getLogger(__name__)

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "AVIF": ".avif"}
# Any constant works; with the uploader's id it names the PostgreSQL advisory lock that orders
# one uploader's stores.
_UPLOAD_LOCK_KEY = zlib.crc32(b"lookalike.uploads") & 0x7FFFFFFF
# Checked files held (each in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, in a temporary file beyond)
# before one query finds the duplicates among them and they are written: few queries per batch, and
# each file read from its sender only once.
_HELD_BYTES = 64 * 1024 * 1024
# Uploads are read, hashed and copied this much at a time.
_CHUNK_BYTES = 1024 * 1024
STORE_UNAVAILABLE_MESSAGE = ("The media store could not be reached or refused the file, so nothing from this upload "
                             "was stored. Try again in a moment.")


@dataclass(frozen=True)
class UploadResult:
    original_name: str
    status: str  # "accepted", "duplicate" or "refused"
    image: Image | None = None  # the new image, or the one this file duplicates
    code: str = ""
    message: str = ""

    @classmethod
    def refused(cls, name: str, rejection: ImageRejected) -> UploadResult:
        return cls(name, "refused", code=rejection.code, message=rejection.message)

    @classmethod
    def duplicate(cls, name: str, image: Image) -> UploadResult:
        return cls(name, "duplicate", image=image, code="duplicate",
                   message=f"Identical to image #{image.pk} ({image.original_name}), which is already stored.")


def clean_original_name(name: str) -> str:
    """The name to show for an upload: its last path component, printable, at most 255 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if len(printable) > 255:
        stem, ext = os.path.splitext(printable)
        printable = stem[: 255 - len(ext[:16])] + ext[:16]
    return printable or "unnamed"


@dataclass(frozen=True)
class FileOnDisk:
    """A file to import, opened only while it is read: a batch holds no file open, and one that
    cannot be opened is refused like one that cannot be read."""
    path: Path
    size: int | None  # None when it could not even be looked at
    mtime_ns: int | None

    @classmethod
    def at(cls, path: Path) -> FileOnDisk:
        try:
            stat = path.stat()
        except OSError:
            return cls(path, None, None)
        return cls(path, stat.st_size, stat.st_mtime_ns)

    def open(self) -> io.BufferedReader:
        return self.path.open("rb")


def images_already_stored(*, files: Sequence[FileOnDisk], owner: User | None) -> dict[Path, int]:
    """The files among these that an earlier import stored for ``owner``, each with its image's id:
    the same name, size and modification time, or, where only the time differs, the same contents.
    One query for the batch; a file is read and hashed only when its time differs."""
    keys = {file.path: (clean_original_name(file.path.name), file.size) for file in files if file.size is not None}
    if not keys:
        return {}
    owner_id = owner.pk if owner is not None and owner.is_authenticated else None
    candidates: dict[tuple[str, int | None], list[tuple[int, int | None, str]]] = {}
    rows = Image.objects.filter(owner_id=owner_id, original_name__in={name for name, _ in keys.values()},
                                byte_size__in={size for _, size in keys.values()})
    for image_id, name, size, mtime_ns, digest in rows.values_list("id", "original_name", "byte_size",
                                                                   "source_mtime_ns", "sha256"):
        candidates.setdefault((name, size), []).append((image_id, mtime_ns, digest))
    stored: dict[Path, int] = {}
    for file in files:
        alike = candidates.get(keys.get(file.path, ("", None)), [])
        same_time = next((image_id for image_id, mtime_ns, _ in alike if mtime_ns == file.mtime_ns), None)
        if same_time is not None:
            stored[file.path] = same_time
        elif alike:
            try:
                with file.open() as source:
                    digest = hashlib.file_digest(source, "sha256").hexdigest()
            except OSError:
                continue  # the upload says why it cannot be read
            same_contents = next((image_id for image_id, _, stored_digest in alike if stored_digest == digest), None)
            if same_contents is not None:
                stored[file.path] = same_contents
    return stored


class _Quota:
    """What an owner may still upload: counted once for a batch of files, then spent file by file.
    Counted first to refuse early, then again under the uploader's lock (``_store``), which is
    what makes it hold when uploads run at once."""

    def __init__(self, owner: User | None) -> None:
        self.max_images = settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES
        self.max_bytes = settings.LOOKALIKE_UPLOAD_QUOTA_BYTES
        self.applies = owner is not None and owner.is_authenticated and bool(self.max_images or self.max_bytes)
        self.images = self.bytes = 0
        if self.applies:
            used = Image.objects.filter(owner=owner).aggregate(images=Count("id"), bytes=Sum("byte_size"))
            self.images, self.bytes = used["images"], used["bytes"] or 0

    def check(self, size: int) -> None:
        """Refuse a file that would take its owner past the quota (0 means no limit)."""
        if not self.applies:
            return
        if self.max_images and self.images >= self.max_images:
            raise ImageRejected("quota_exceeded", f"You have reached your quota of {self.max_images} images; "
                                                  "delete some to upload more.")
        if self.max_bytes and self.bytes + size > self.max_bytes:
            raise ImageRejected("quota_exceeded",
                                f"This file ({filesizeformat(size)}) would take you past your quota of "
                                f"{filesizeformat(self.max_bytes)}; you have used {filesizeformat(self.bytes)}.")

    def spend(self, size: int) -> None:
        self.images += 1
        self.bytes += size


@dataclass
class _Accepted:
    """A file that passed every check, on its way into the gallery: what its row will say."""
    position: int  # in the batch of uploads
    name: str
    digest: str
    format: str
    width: int
    height: int
    byte_size: int
    source_mtime_ns: int | None
    written: list[str] = field(default_factory=list)  # its files in storage, so far


class _StoreFailed(Exception):
    """Writing an original to the media store failed: the upload stores nothing."""


def image_upload(*, source: Readable, original_name: str, owner: User | None) -> UploadResult:
    """Validate, store and queue one uploaded file. Nothing is stored for a refused file."""
    return images_upload(uploads=[(original_name, source)], owner=owner)[0]


def images_upload(*, uploads: Sequence[tuple[str, Readable | FileOnDisk]],
                  owner: User | None) -> list[UploadResult]:
    """Check, store and queue uploaded files, given as (name, contents): one result each, in order.

    The store step is light: each file is read once, in chunks, hashed, checked as far as its
    header allows (type, pixel and frame counts: ``read_header``) and streamed to the media
    storage as it came (in parts, for a large file in the object store). Nothing is
    decoded or re-encoded here: the embedding worker decodes each original once, makes its
    thumbnail and vectors from the same pixels, and marks a file that only then turns out
    damaged failed with the reason an upload refusal would give. The rows of a batch are
    inserted in one transaction, with one message to the workers per embedding batch.

    Nothing is stored for a refused file. A file identical to an image that the uploader may see
    is not stored again but named as its duplicate. A file whose only stored copies the uploader
    may not see (another user's hidden, awaiting or unfinished upload) is stored as theirs, as a
    new file would be, so that the answer tells them nothing about those images. ``owner`` None
    is an import by the operator, who may see every image. When the media storage cannot take
    an original (the object store unreachable, say), every file that would have been stored is
    refused with ``store_unavailable`` and nothing of the upload is kept.
    """
    names = [clean_original_name(original_name) for original_name, _ in uploads]
    results: dict[int, UploadResult] = {}
    quota = _Quota(owner)
    first_of: dict[str, int] = {}
    copy_of: dict[int, int] = {}  # a later copy of a file in this batch -> the first one's position
    accepted: list[_Accepted] = []
    held: list[tuple[_Accepted, IO[bytes]]] = []  # checked, waiting for the duplicate look-up
    held_bytes = 0
    unfinished: list[str] = []  # the lists of files written before their rows (gallery.unfinished)
    try:
        for position, (_, source) in enumerate(uploads):
            name = names[position]
            try:
                spooled, digest, size = _spool(source)
            except ImageRejected as rejection:
                results[position] = UploadResult.refused(name, rejection)
                continue
            if digest in first_of:
                spooled.close()
                copy_of[position] = first_of[digest]  # judged with the first copy, below
                continue
            first_of[digest] = position
            try:
                header = read_header(spooled, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS)
            except ImageRejected as rejection:
                spooled.close()
                results[position] = UploadResult.refused(name, rejection)
                continue
            mtime_ns = source.mtime_ns if isinstance(source, FileOnDisk) else None
            held.append((_Accepted(position, name, digest, header.format, header.width, header.height, size,
                                   mtime_ns), spooled))
            held_bytes += size
            if held_bytes >= _HELD_BYTES:
                _write_new(held, owner, quota, results, accepted, unfinished)
                held, held_bytes = [], 0
        _write_new(held, owner, quota, results, accepted, unfinished)
        results |= _store(accepted, owner)
        unfinished_clear(lists=unfinished)
    except _StoreFailed:
        log.exception("The media storage could not take an upload's original; nothing of the upload is kept")
        for item in accepted:
            delete_files(item.written)
        unfinished_clear(lists=unfinished)
        refusal = ImageRejected("store_unavailable", STORE_UNAVAILABLE_MESSAGE)
        for position in range(len(uploads)):
            if position not in results and position not in copy_of:
                results[position] = UploadResult.refused(names[position], refusal)
    except BaseException:
        for item in accepted:
            delete_files(item.written)
        unfinished_clear(lists=unfinished)
        raise
    finally:
        for _, spooled in held:
            spooled.close()
    for position, first_position in copy_of.items():
        first = results[first_position]
        if first.image is None:  # the first copy was refused: so is this one
            results[position] = replace(first, original_name=names[position])
        else:
            results[position] = UploadResult.duplicate(names[position], first.image)
    return [results[position] for position in range(len(uploads))]


def _write_new(held: list[tuple[_Accepted, IO[bytes]]], owner: User | None, quota: _Quota,
               results: dict[int, UploadResult], accepted: list[_Accepted], unfinished: list[str]) -> None:
    """Write the originals of the held files that are neither duplicates (one query for them all)
    nor past the quota, adding them to ``accepted``, after listing their names in a list of
    unfinished uploads added to ``unfinished``; the others' results go into ``results``.
    Each held file is closed once written or judged; ``_StoreFailed`` if the storage refuses one."""
    if not held:
        return
    spooled_of = {item.position: spooled for item, spooled in held}
    # One folder for the batch: creating a folder costs as much as writing a small file, and a
    # folder per file (the first tens of thousands of uploads each land in a new one) tripled
    # the store step's writes. Batches still spread over the 65,536 folders.
    folder = uuid.uuid4().hex[:4]
    try:
        new = _new_within_quota([item for item, _ in held], owner, quota, results)
        names = {item.position: _original_name(item.format, folder) for item in new}
        try:
            if new:
                unfinished.append(unfinished_mark(names=list(names.values())))
            for item in new:
                accepted.append(item)
                item.written.append(_write_original(spooled_of[item.position], names[item.position]))
        except STORE_ERRORS as exc:
            raise _StoreFailed from exc
    finally:
        for spooled in spooled_of.values():
            spooled.close()


def _new_within_quota(items: list[_Accepted], owner: User | None, quota: _Quota,
                      results: dict[int, UploadResult]) -> list[_Accepted]:
    """The files that are neither copies of an image the uploader may see nor past the quota;
    the others' results go into ``results``."""
    stored = _copies_seen_by(owner, (item.digest for item in items))
    new = []
    for item in items:
        if item.digest in stored:
            results[item.position] = UploadResult.duplicate(item.name, stored[item.digest])
            continue
        try:
            quota.check(item.byte_size)
        except ImageRejected as rejection:
            results[item.position] = UploadResult.refused(item.name, rejection)
            continue
        quota.spend(item.byte_size)
        new.append(item)
    return new


@contextmanager
def _reading(source: Readable | FileOnDisk) -> Iterator[Readable]:
    if isinstance(source, FileOnDisk):
        with source.open() as opened:
            yield opened
    else:
        yield source


def _spool(source: Readable | FileOnDisk) -> tuple[IO[bytes], str, int]:
    """A copy of an upload, its SHA-256 and its size, read once in chunks: in memory up to
    FILE_UPLOAD_MAX_MEMORY_SIZE, in a temporary file beyond; refused as soon as it passes the limit."""
    limit = settings.LOOKALIKE_MAX_UPLOAD_BYTES
    spooled = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)
    digest = hashlib.sha256()
    size = 0
    try:
        with _reading(source) as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise ImageRejected("too_large", file_too_large_message(limit))
                digest.update(chunk)
                spooled.write(chunk)
    except OSError as exc:
        spooled.close()
        raise ImageRejected("unreadable", f"The file cannot be read: {exc.strerror or exc}.") from None
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled, digest.hexdigest(), size


def _original_name(image_format: str, folder: str) -> str:
    """A generated name for an original in ``folder`` (4 hex digits)."""
    return f"originals/{folder[:2]}/{folder[2:]}/{uuid.uuid4().hex}{_EXTENSIONS[image_format]}"


def _write_original(spooled: IO[bytes], name: str) -> str:
    """The original as sent: the one file the store step writes, streamed."""
    return default_storage.save(name, File(spooled))


def _copies_seen_by(owner: User | None, digests: Iterable[str]) -> dict[str, Image]:
    """The stored image that each of these files duplicates, among the images that ``owner`` may
    see (every image when there is no owner); the earliest, where there are several."""
    images = Image.objects.all() if owner is None else image_list_visible(user=owner)
    copies: dict[str, Image] = {}
    for image in images.filter(sha256__in=list(set(digests))).order_by("pk"):
        copies.setdefault(image.sha256, image)
    return copies


def _lock_uploads_of(owner: User | None) -> None:
    """Until the transaction ends, no other store of this uploader's (or, with no owner, of
    another import) can run: each sees what the one before it stored. SQLite already runs one
    writing transaction at a time (the settings start each one IMMEDIATE)."""
    if connection.vendor == "postgresql":
        owner_id = owner.pk if owner is not None and owner.is_authenticated else 0
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_UPLOAD_LOCK_KEY, owner_id % 2**31])


def _store(items: list[_Accepted], owner: User | None) -> dict[int, UploadResult]:
    """Insert the rows of accepted uploads whose files are written, and queue them; each one's result.

    Duplicates and the quota are judged again under the uploader's lock, since the first look
    was taken outside it: a file that another upload stored meanwhile, where the uploader may see
    it, becomes its duplicate, and a file that other uploads have left no room for is refused.
    The original of a file not stored is deleted.
    """
    results: dict[int, UploadResult] = {}
    with transaction.atomic():
        _lock_uploads_of(owner)
        new = _new_within_quota(items, owner, _Quota(owner), results)
        images = Image.objects.bulk_create([_new_image(item, owner) for item in new])
        queue_embeddings([image.pk for image in images])
    for item in items:
        if item.position in results:
            delete_files(item.written)
            item.written.clear()
    for item, image in zip(new, images, strict=True):
        results[item.position] = UploadResult(item.name, "accepted", image=image)
    return results


def _new_image(item: _Accepted, owner: User | None) -> Image:
    [original] = item.written
    return Image(
        owner=owner if owner is not None and owner.is_authenticated else None, original_name=item.name,
        sha256=item.digest, format=item.format, width=item.width, height=item.height, byte_size=item.byte_size,
        source_mtime_ns=item.source_mtime_ns,
        original=original,
        # With moderation on, it waits hidden until a staff member approves it.
        hidden=settings.LOOKALIKE_MODERATION, awaiting_approval=settings.LOOKALIKE_MODERATION,
    )


def image_delete(*, image: Image) -> None:
    """Delete an image, its vectors and files; it leaves search results at once."""
    files = [name for name in (image.original.name, image.display.name, image.thumbnail.name) if name]
    image_id = image.pk
    with transaction.atomic():
        image.delete()
        changelog.record_changes(image_ids=[image_id], kind=IndexChange.Kind.REMOVE)
        transaction.on_commit(lambda: delete_files(files))
        queue_index_sync()


# Curation (the admin's bulk actions) --------------------------------------------------------


def images_set_hidden(*, image_ids: Collection[int], hidden: bool) -> int:
    """Hide images from search and the public gallery, or show them again; they stay indexed."""
    return Image.objects.filter(id__in=list(image_ids)).exclude(hidden=hidden).update(hidden=hidden)


def images_approve(*, image_ids: Collection[int]) -> int:
    """Let uploads that wait for moderation appear in search and the gallery."""
    return Image.objects.filter(id__in=list(image_ids), awaiting_approval=True).update(awaiting_approval=False,
                                                                                       hidden=False)


def images_delete(*, image_ids: Collection[int]) -> int:
    count = 0
    for image in Image.objects.filter(id__in=list(image_ids)):
        image_delete(image=image)
        count += 1
    return count


def parse_tag_names(text: str) -> list[str]:
    """Tag names from a comma-separated list: trimmed, lower-case, without repeats."""
    names = []
    for raw in text.split(","):
        name = " ".join(raw.split()).lower()
        if len(name) > TAG_NAME_MAX_LENGTH:
            raise ValueError(f"The tag {name[:20]!r}... is longer than {TAG_NAME_MAX_LENGTH} characters.")
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError("Name at least one tag, e.g. \"cats, holiday\".")
    return names


@transaction.atomic
def images_add_tags(*, image_ids: Collection[int], names: list[str]) -> int:
    tags = [Tag.objects.get_or_create(name=name)[0] for name in names]
    links = [Image.tags.through(image_id=image_id, tag_id=tag.pk)
             for image_id in Image.objects.filter(id__in=list(image_ids)).values_list("id", flat=True) for tag in tags]
    Image.tags.through.objects.bulk_create(links, ignore_conflicts=True)
    return len(links)


def images_remove_tags(*, image_ids: Collection[int], names: list[str]) -> int:
    deleted, _ = Image.tags.through.objects.filter(image_id__in=list(image_ids), tag__name__in=names).delete()
    return deleted


def images_reembed(*, image_ids: Collection[int]) -> int:
    """Embed images again with the current backbone (after a failure, or a file repaired on disk).
    Each leaves search while it waits, and comes back with its new vector."""
    with transaction.atomic():
        ids = list(Image.objects.filter(id__in=list(image_ids)).exclude(state=Image.State.EMBEDDING)
                   .values_list("id", flat=True))
        Image.objects.filter(id__in=ids).exclude(state=Image.State.EMBEDDING).update(
            state=Image.State.QUEUED, error="", attempts=0, retry_after=None)
        queue_embeddings(ids)
    return len(ids)


def duplicate_group_resolve(*, group: DuplicateGroup, keep_id: int, action: str) -> int:
    """Keep one image of the group and hide or delete the others; returns how many were changed."""
    if keep_id not in group.image_ids:
        raise ValueError(f"Image #{keep_id} is not in this group.")
    if action not in ("hide", "delete"):
        raise ValueError(f"Unknown action {action!r}: use hide or delete.")
    others = [i for i in group.image_ids if i != keep_id]
    with transaction.atomic():
        if not DuplicateGroup.objects.filter(pk=group.pk, resolved_at__isnull=True).update(resolved_at=timezone.now()):
            return 0
        if action == "hide":
            return images_set_hidden(image_ids=others, hidden=True)
        return images_delete(image_ids=others)
