"""Writes of the gallery: storing uploads and deleting images. The web upload, the API and
``import_images`` all go through ``image_upload``, so they validate and de-duplicate alike."""
from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.template.defaultfilters import filesizeformat

from gallery.imaging import DISPLAY_MAX_SIDE, THUMBNAIL_MAX_SIDE, ImageRejected, decode_image, encode_jpeg
from gallery.models import Image, Tag
from search import changelog
from search.models import IndexChange
from search.services import queue_embedding, queue_index_sync

log = logging.getLogger(__name__)

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "AVIF": ".avif"}


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


def read_limited(source: BinaryIO, limit: int) -> bytes:
    """Read a whole upload, refusing it as soon as it is over ``limit`` bytes."""
    data = source.read(limit + 1)
    if len(data) > limit:
        raise ImageRejected("too_large", f"The file is larger than the limit of {filesizeformat(limit)}.")
    return data


def _check_quota(owner: AbstractBaseUser | None, size: int) -> None:
    """Refuse a file that would take its owner past the upload quota (0 means no limit)."""
    max_images, max_bytes = settings.LOOKALIKE_UPLOAD_QUOTA_IMAGES, settings.LOOKALIKE_UPLOAD_QUOTA_BYTES
    if owner is None or not owner.is_authenticated or not (max_images or max_bytes):
        return
    used = Image.objects.filter(owner=owner).aggregate(images=Count("id"), bytes=Sum("byte_size"))
    if max_images and used["images"] >= max_images:
        raise ImageRejected("quota_exceeded", f"You have reached your quota of {max_images} images; "
                                              "delete some to upload more.")
    used_bytes = used["bytes"] or 0
    if max_bytes and used_bytes + size > max_bytes:
        raise ImageRejected("quota_exceeded",
                            f"This file ({filesizeformat(size)}) would take you past your quota of "
                            f"{filesizeformat(max_bytes)}; you have used {filesizeformat(used_bytes)}.")


def image_upload(*, source: BinaryIO, original_name: str, owner: AbstractBaseUser | None) -> UploadResult:
    """Validate, store and queue one uploaded file. Nothing is stored for a refused file."""
    name = clean_original_name(original_name)
    try:
        data = read_limited(source, settings.LOOKALIKE_MAX_UPLOAD_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        existing = Image.objects.filter(sha256=digest).first()
        if existing:
            return UploadResult.duplicate(name, existing)
        _check_quota(owner, len(data))
        decoded = decode_image(data, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS)
    except ImageRejected as rejection:
        return UploadResult.refused(name, rejection)

    stem = uuid.uuid4().hex
    folder = f"{stem[:2]}/{stem[2:4]}"
    written: list[str] = []
    try:
        for kind, payload, ext in (
            ("originals", data, _EXTENSIONS[decoded.format]),
            ("display", encode_jpeg(decoded.image, max_side=DISPLAY_MAX_SIDE, quality=88), ".jpg"),
            ("thumbs", encode_jpeg(decoded.image, max_side=THUMBNAIL_MAX_SIDE, quality=82), ".jpg"),
        ):
            written.append(default_storage.save(f"{kind}/{folder}/{stem}{ext}", ContentFile(payload)))
        with transaction.atomic():
            image = Image.objects.create(
                owner=owner if owner is not None and owner.is_authenticated else None,
                original_name=name, sha256=digest, format=decoded.format, width=decoded.width,
                height=decoded.height, byte_size=len(data), original=written[0], display=written[1],
                thumbnail=written[2],
                # With moderation on, it waits hidden until a staff member approves it.
                hidden=settings.LOOKALIKE_MODERATION, awaiting_approval=settings.LOOKALIKE_MODERATION,
            )
            queue_embedding(image.pk)
    except IntegrityError:
        _delete_files(written)
        winner = Image.objects.filter(sha256=digest).first()
        if winner is None:
            raise
        return UploadResult.duplicate(name, winner)
    except BaseException:
        _delete_files(written)
        raise
    return UploadResult(name, "accepted", image=image)


def _delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("Could not delete %s", name, exc_info=True)


def image_delete(*, image: Image) -> None:
    """Delete an image, its vectors and files; it leaves search results at once."""
    files = [image.original.name, image.display.name, image.thumbnail.name]
    image_id = image.pk
    with transaction.atomic():
        image.delete()
        changelog.record_changes(image_ids=[image_id], kind=IndexChange.Kind.REMOVE)
        transaction.on_commit(lambda: _delete_files(files))
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
        if len(name) > Tag._meta.get_field("name").max_length:
            raise ValueError(f"The tag {name[:20]!r}... is longer than 64 characters.")
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
        for image_id in ids:
            queue_embedding(image_id)
    return len(ids)
