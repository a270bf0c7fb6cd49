"""Decoding untrusted image files, and making the copies the site serves. Free of Django.

Only an allowlist of formats is ever handed to a decoder, the pixel count is checked from the
header before any pixel is decoded, and the whole first frame is decoded before a file is
accepted: a header that parses is not proof of an image. What the site serves is re-encoded
from the decoded pixels, so metadata (GPS positions included) and anything appended to the
file never reach a browser.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "AVIF": "AVIF"}
ACCEPTED_LABEL = ", ".join(ACCEPTED_FORMATS.values())
DISPLAY_MAX_SIDE = 1600
THUMBNAIL_MAX_SIDE = 400
DISPLAY_QUALITY = 88
THUMBNAIL_QUALITY = 82
# Only the first frame is ever decoded, but the original is kept and other software may decode
# every frame of it; no real animation comes near this many frames.
MAX_FRAMES = 1000

# Recognised by their first bytes, so that a refusal can name what the file is.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"), (b"\x89PNG", 0, "PNG"), (b"GIF8", 0, "GIF"), (b"WEBP", 8, "WEBP"),
    (b"ftypavif", 4, "AVIF"), (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"BM", 0, "BMP"),
    (b"%PDF", 0, "PDF"), (b"8BPS", 0, "Photoshop"), (b"\x00\x00\x01\x00", 0, "ICO"), (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"), (b"ftypmif1", 4, "HEIF"), (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
)


class ImageRejected(ValueError):
    """A file that will not be stored, with a reason to show to the person who sent it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    # RGB, turned upright by its EXIF orientation; a large JPEG is decoded at a reduced scale.
    image: Image.Image
    format: str
    # The file's own size, upright: what the image is, whatever scale it was decoded at.
    width: int
    height: int


def _refusal_for_unidentified(data: bytes) -> ImageRejected:
    head = data[:64]
    if head.lstrip().lower().startswith((b"<svg", b"<?xml")):
        kind = "SVG"
    else:
        kind = next((label for magic, offset, label in _SIGNATURES if head[offset:offset + len(magic)] == magic), "")
    if kind in ACCEPTED_FORMATS:
        return ImageRejected("damaged", f"The {ACCEPTED_FORMATS[kind]} file is damaged and cannot be read.")
    if kind:
        return ImageRejected("unsupported_format",
                             f"{kind} images are not accepted. Accepted formats: {ACCEPTED_LABEL}.")
    return ImageRejected("not_an_image", f"The file is not an image in an accepted format ({ACCEPTED_LABEL}).")


def _frame_count(image: Image.Image) -> int:
    try:
        # Counting reads the frame headers only, without decoding any frame.
        return int(getattr(image, "n_frames", 1))
    except Exception as exc:
        raise ImageRejected("damaged", f"The file is damaged: its frames cannot be read ({exc}).") from None


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode the first frame of an uploaded file, or raise ``ImageRejected``."""
    if not data:
        raise ImageRejected("empty", "The file is empty.")
    with warnings.catch_warnings():
        # Pillow warns about each oddity it tolerates (corrupt EXIF, malformed MPO, ...): the
        # decode below is the verdict. A decompression-bomb warning, though, is a refusal.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode(data, max_pixels)


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    try:
        image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
        width, height = image.size
    except UnidentifiedImageError:
        raise _refusal_for_unidentified(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels", "The image has too many pixels to be processed safely.") from None
    except Exception as exc:  # a hostile header can make any decoder raise anything
        raise ImageRejected("damaged", f"The file is damaged: its image header cannot be read ({exc}).") from None
    if width < 1 or height < 1:
        raise ImageRejected("damaged", "The image has no pixels.")
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"The image is {width} × {height} pixels; the limit is {max_pixels / 1e6:g} megapixels.",
        )
    frames = _frame_count(image)
    if frames > MAX_FRAMES:
        raise ImageRejected("too_many_frames", f"The animation has {frames} frames; the limit is {MAX_FRAMES}.")
    if image.format in ("JPEG", "MPO"):
        # Decoding straight to a reduced scale costs a fraction of a full decode and still
        # reads the whole file, so truncation is detected all the same.
        image.draft("RGB", _fit(width, height, DISPLAY_MAX_SIDE))
    try:
        image.load()
        upright = _upright(image)
        rgb = to_rgb(upright)
    except Exception as exc:
        raise ImageRejected("damaged", f"The file is damaged or truncated and cannot be decoded ({exc}).") from None
    if upright.size != image.size:  # turned a quarter by its EXIF orientation
        width, height = height, width
    # Cameras write multi-picture JPEGs (MPO); the first picture is a plain JPEG.
    return DecodedImage(rgb, "JPEG" if image.format == "MPO" else str(image.format), width, height)


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # Unreadable EXIF only costs the orientation, not the image.
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels for any mode; transparency is flattened onto white, 16-bit is scaled to 8."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and pixels.max(initial=0) > 255 else 255.0
        grey = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_jpeg(image: Image.Image, *, max_side: int, quality: int = 85) -> bytes:
    """A re-encoded copy no larger than ``max_side``, with no metadata."""
    return _jpeg(_shrunk(image, max_side, Image.Resampling.LANCZOS), quality)


def served_copies(image: Image.Image) -> tuple[bytes, bytes]:
    """The display copy and the thumbnail of a decoded upload: JPEG files with no metadata.

    The thumbnail is made from the display copy's pixels, and a large photo is shrunk to the
    display size with a bilinear filter: on a 12-megapixel photo, Lanczos took about twice as
    long, for copies that differ from these by 50 dB PSNR or more, nothing an eye can see.
    """
    display = _shrunk(image, DISPLAY_MAX_SIDE, Image.Resampling.BILINEAR)
    thumbnail = _shrunk(display, THUMBNAIL_MAX_SIDE, Image.Resampling.LANCZOS)
    return _jpeg(display, DISPLAY_QUALITY), _jpeg(thumbnail, THUMBNAIL_QUALITY)


def _shrunk(image: Image.Image, max_side: int, resample: Image.Resampling) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    image = image.copy()
    image.thumbnail((max_side, max_side), resample, reducing_gap=2.0)
    return image


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # An empty comment: Pillow would otherwise copy the decoded file's JPEG comment into the copy.
    image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=max(image.size) > 256, comment=b"")
    return buffer.getvalue()


def open_for_embedding(path: str, *, min_side: int) -> Image.Image:
    """Open one of the site's own JPEG copies at the smallest scale whose sides still cover ``min_side``."""
    image = Image.open(path, formats=["JPEG"])
    image.draft("RGB", (min_side, min_side))
    return image.convert("RGB")
