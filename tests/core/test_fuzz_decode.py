"""Mutated image files through the ingest path: every outcome is an image or the site's own refusal."""
import io
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.imaging import THUMBNAIL_MAX_SIDE, DecodedImage, ImageRejected, decode_image, encode_jpeg
from tests import images

SITE_REFUSALS = {"empty", "damaged", "unsupported_format", "not_an_image", "too_many_pixels", "too_many_frames"}
# Small, so that a mutated header claiming a large size is refused instead of decoded slowly.
MAX_PIXELS = 4_000_000


def _seeds() -> list[bytes]:
    picture = images.picture(3, size=(96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        images.encode(picture, "JPEG", quality=80, exif=exif.tobytes()),
        images.encode(picture, "JPEG", quality=70, progressive=True),
        images.encode(picture, "PNG"),
        images.encode(picture.convert("P"), "PNG", transparency=3),
        images.encode(picture, "WEBP", quality=70),
        images.encode(picture, "GIF"),
        images.animation("GIF", 4),
        images.animation("WEBP", 3),
        images.encode(picture, "AVIF", quality=50),
    ]


SEEDS = _seeds()


def decode_or_refusal(data: bytes) -> DecodedImage | ImageRejected:
    """Any other exception fails the test."""
    try:
        return decode_image(data, max_pixels=MAX_PIXELS)
    except ImageRejected as rejection:
        return rejection


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            # Headers come first: bias towards them, where a changed byte means a changed size or type.
            at = min(at, draw(st.integers(0, 64)))
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(patch)] = patch
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


@settings(max_examples=1000, deadline=timedelta(seconds=5), database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_a_mutated_file_is_decoded_or_refused_by_the_site(data):
    decoded = decode_or_refusal(data)
    if isinstance(decoded, ImageRejected):
        assert decoded.code in SITE_REFUSALS
        assert decoded.message
        return
    assert decoded.image.mode == "RGB"
    assert decoded.width * decoded.height <= MAX_PIXELS
    copy = Image.open(io.BytesIO(encode_jpeg(decoded.image, max_side=THUMBNAIL_MAX_SIDE)))
    assert copy.format == "JPEG"
    assert max(copy.size) <= THUMBNAIL_MAX_SIDE


@settings(max_examples=100, deadline=timedelta(seconds=5), database=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_by_the_site(data):
    decoded = decode_or_refusal(data)
    if isinstance(decoded, ImageRejected):
        assert decoded.code in SITE_REFUSALS
    else:
        assert decoded.image.mode == "RGB"
