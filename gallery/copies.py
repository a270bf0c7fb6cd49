"""The worker's side of storing an image: each original decoded once, and the served copies made
from those pixels. The upload only stored the original (``gallery.services.images_upload``).

The embedding worker decodes a batch of originals at the reduced scale that the thumbnail and
the model need (``originals_decode``), writes each thumbnail from those pixels, and hands the
pixels on to the model. The display copy needs a finer decode, so it is made afterwards by a
task queued behind the embeddings (``images_make_display_copies``); until it exists, pages show
the thumbnail.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from PIL.Image import Image as Picture

from config.object_store import STORE_ERRORS
from core.imaging import (
    DISPLAY_MAX_SIDE,
    THUMBNAIL_MAX_SIDE,
    THUMBNAIL_QUALITY,
    ImageRejected,
    decode_image,
    display_jpeg,
    jpeg_orientation,
    read_header,
    thumbnail_jpeg,
)
from gallery.models import Image
from gallery.tasks import make_display_copies

_UNREADABLE: tuple[type[Exception], ...] = (ImageRejected, *STORE_ERRORS)
_DEVICE_BATCH_ERRORS: tuple[type[Exception], ...] = (RuntimeError, *_UNREADABLE)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# Display copies made between two looks at whether embeddings wait: about half a second of
# work for 12-megapixel photos.
DISPLAY_COPIES_AT_ONCE = 8


@dataclass
class DecodedBatch:
    # image id -> its pixels, upright, covering the thumbnail's size and ``min_side`` on both
    # sides: a Pillow image, or, decoded on the embedder's device, a uint8 tensor (channels first)
    pictures: dict[int, Picture | torch.Tensor] = field(default_factory=dict)
    # image id -> why its file is refused: found damaged only now, with an upload refusal's code
    damaged: dict[int, ImageRejected] = field(default_factory=dict)
    # image id -> why it could not be read this time (worth another try)
    failed: dict[int, str] = field(default_factory=dict)


class DeviceDecoder(Protocol):
    """An embedder that decodes JPEGs on its device (``core.embedding.Embedder``)."""
    device: torch.device

    def decode_jpegs(self, blobs: Sequence[bytes], orientations: Sequence[int] = ()) -> list[torch.Tensor]: ...


def copy_name(original: str, kind: str) -> str:
    """Where a served copy of this original lives: the original's generated name in ``kind``'s folder.
    One name per image, so a batch that runs again after its worker died overwrites its copies."""
    path = PurePosixPath(original)
    return str(PurePosixPath(kind, *path.parts[1:-1], f"{path.stem}.jpg"))


def delete_files(names: list[str]) -> None:
    """Delete files whose rows are gone or were never made. One that the storage will not delete
    (the object store unreachable, say) is logged and left: nothing names it, so nothing serves it."""
    for name in names:
        try:
            default_storage.delete(name)
        except STORE_ERRORS:
            log.warning("Could not delete %s; it stays in the media storage, unused", name, exc_info=True)


def _write(name: str, payload: bytes) -> str:
    default_storage.delete(name)
    return default_storage.save(name, ContentFile(payload))


def originals_decode(images: list[Image], *, min_side: int, on_device: DeviceDecoder | None = None) -> DecodedBatch:
    """Decode each image's original once, at the smallest scale that covers the thumbnail and
    ``min_side``, and write the thumbnail of each image that lacks one from those pixels.

    With ``on_device``, the JPEGs are decoded on the embedder's device in batches, and their
    thumbnails are shrunk and encoded there too, so that the host only reads bytes; other
    formats, and a batch the device decoder refuses, are decoded by Pillow (which then tells
    which file is damaged, and why).
    """
    batch = DecodedBatch()
    thumbnails: dict[int, bytes] = {}
    by_pillow = images
    if on_device is not None:
        jpegs = [image for image in images if image.format == "JPEG"]
        try:
            decoded = _decode_on_device(jpegs, on_device)
        except _DEVICE_BATCH_ERRORS:
            log.warning("Decoding a batch on %s failed; decoding it with Pillow to find the bad file",
                        on_device.device)
        else:
            by_pillow = [image for image in images if image.format != "JPEG"]
            batch.pictures.update(zip([image.pk for image in jpegs], decoded, strict=True))
            lacking = [(image.pk, pixels) for image, pixels in zip(jpegs, decoded, strict=True) if not image.thumbnail]
            thumbnails.update(_encoded_on_device(lacking))
    for image in by_pillow:
        try:
            with default_storage.open(image.original.name, "rb") as original:
                picture = decode_image(original, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS,
                                       max_side=THUMBNAIL_MAX_SIDE, min_side=min_side).image
        except ImageRejected as rejection:
            batch.damaged[image.pk] = rejection
            continue
        except STORE_ERRORS as exc:  # a missing or unreadable stored file: the storage, not the image
            batch.failed[image.pk] = f"The stored original could not be read: {exc}"
            continue
        batch.pictures[image.pk] = picture
        if not image.thumbnail:
            thumbnails[image.pk] = thumbnail_jpeg(picture)
    _store_thumbnails([image for image in images if image.pk in thumbnails], thumbnails, batch)
    return batch


def _decode_on_device(jpegs: list[Image], decoder: DeviceDecoder) -> list[torch.Tensor]:
    blobs = []
    for image in jpegs:
        with default_storage.open(image.original.name, "rb") as original:
            blobs.append(original.read())
    # The header checks of the upload, again: the stored file is not trusted to be what was checked.
    for blob in blobs:
        read_header(blob, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS)
    return decoder.decode_jpegs(blobs, [jpeg_orientation(blob) for blob in blobs])


def _encoded_on_device(pictures: list[tuple[int, torch.Tensor]]) -> dict[int, bytes]:
    from core.embedding import encode_jpegs

    encoded = encode_jpegs([pixels for _, pixels in pictures], max_side=THUMBNAIL_MAX_SIDE,
                           quality=THUMBNAIL_QUALITY)
    return dict(zip([image_id for image_id, _ in pictures], encoded, strict=True))


def _store_thumbnails(images: list[Image], thumbnails: dict[int, bytes], batch: DecodedBatch) -> None:
    """Write the thumbnails; an image whose thumbnail the storage does not take fails this attempt."""
    stored = []
    for image in images:
        try:
            image.thumbnail.name = _write(copy_name(image.original.name, "thumbs"), thumbnails[image.pk])
        except STORE_ERRORS as exc:
            batch.pictures.pop(image.pk, None)
            batch.failed[image.pk] = f"The thumbnail could not be written: {exc}"
            continue
        stored.append(image)
    if stored:
        Image.objects.bulk_update(stored, ["thumbnail"])


def image_picture(image: Image) -> Picture:
    """A stored image's pixels at the display copy's scale: from that copy once it is made, else
    from the original."""
    with default_storage.open(image.display.name or image.original.name, "rb") as file:
        return decode_image(file, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS, max_side=DISPLAY_MAX_SIDE).image


def queue_display_copies() -> None:
    """Ask a worker to make the display copies that indexed images lack, once the current
    transaction commits. The task goes to the back of the queue, behind the embeddings already waiting."""
    transaction.on_commit(make_display_copies.delay, robust=True)


def display_copies_catch_up(*, pause: Callable[[], bool]) -> int:
    """Make the display copies that indexed images lack, oldest first, a few at a time, until none
    is left or ``pause()`` says that more urgent work waits; how many were made.

    A display copy can come later (pages show the thumbnail meanwhile); a photo that is not yet
    searchable cannot, so a worker that also embeds asks before each few whether embeddings wait.
    When they do, it queues another catch-up behind them for the rest: the messages waiting may
    find their images embedded already and queue none. With nothing left to make it never waits.
    Two catch-ups at once share the work: each takes the images the other has not locked.
    """
    made = 0
    after = 0
    while True:
        with transaction.atomic():
            ids = list(Image.objects.select_for_update(skip_locked=True)
                       .filter(state=Image.State.INDEXED, display="", id__gt=after)
                       .order_by("id").values_list("id", flat=True)[:DISPLAY_COPIES_AT_ONCE])
            if not ids:
                return made
            if pause():
                queue_display_copies()
                return made
            made += images_make_display_copies(image_ids=ids)
        after = ids[-1]


def display_copies_missing() -> int:
    """How many indexed images still lack a display copy."""
    return Image.objects.filter(state=Image.State.INDEXED, display="").count()


def images_make_display_copies(*, image_ids: Collection[int]) -> int:
    """Make the display copies that these images still lack, from their originals; how many were made.
    Running it twice is harmless: both write the same copy under the same name."""
    made = 0
    for image in Image.objects.filter(id__in=list(image_ids), display="").exclude(state=Image.State.FAILED):
        try:
            with default_storage.open(image.original.name, "rb") as original:
                decoded = decode_image(original, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS,
                                       max_side=DISPLAY_MAX_SIDE)
        except _UNREADABLE:
            # The embedding worker decides what a bad file means; pages keep showing the thumbnail.
            log.warning("Could not make the display copy of image #%d", image.pk, exc_info=True)
            continue
        name = _write(copy_name(image.original.name, "display"), display_jpeg(decoded.image))
        made += Image.objects.filter(pk=image.pk, display="").update(display=name)
    return made
