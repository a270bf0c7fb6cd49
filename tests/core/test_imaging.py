"""Decoding untrusted files and making the served copies, without Django."""
import io

import numpy as np
import pytest
from PIL import Image

from core.imaging import (
    ImageRejected,
    decode_image,
    display_jpeg,
    display_jpeg_pixels,
    encode_jpeg,
    read_header,
    thumbnail_jpeg,
)
from tests import images

LIMIT = 60_000_000


def rejected(data: bytes, limit: int = LIMIT) -> ImageRejected:
    with pytest.raises(ImageRejected) as error:
        decode_image(data, max_pixels=limit)
    return error.value


@pytest.mark.parametrize(("fmt", "name"), [("TIFF", "TIFF"), ("BMP", "BMP"), ("PDF", "PDF")])
def test_a_known_but_unaccepted_format_is_named(fmt, name):
    error = rejected(images.encode(images.picture(1), fmt))
    assert error.code == "unsupported_format"
    assert error.message.startswith(f"{name} images are not accepted")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_file_is_refused_as_damaged(fmt):
    data = images.encode(images.picture(1, size=(640, 480)), fmt)
    error = rejected(data[: len(data) // 2])
    assert error.code == "damaged"


def test_a_file_cut_inside_its_header_is_refused_as_damaged():
    error = rejected(images.jpeg(1)[:40])
    assert error.code == "damaged"
    assert "header" in error.message


def test_a_pixel_flood_is_refused_before_decoding():
    error = rejected(images.png_header_claiming(50_000, 50_000))
    assert error.code == "too_many_pixels"


def test_the_pixel_limit_is_the_configured_one():
    error = rejected(images.jpeg(1, size=(400, 300)), limit=100_000)
    assert error.code == "too_many_pixels"
    assert "400 × 300" in error.message and "0.1 megapixels" in error.message


@pytest.mark.parametrize(("orientation", "upright_size"), [(1, (320, 240)), (6, (240, 320)), (8, (240, 320))])
def test_exif_orientation_turns_the_image_upright(orientation, upright_size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = images.encode(images.picture(1), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=LIMIT).image.size == upright_size


@pytest.mark.parametrize(("orientation", "size"), [(1, (4000, 3000)), (6, (3000, 4000))])
def test_a_large_jpeg_keeps_its_own_size_though_decoded_smaller(orientation, size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = images.encode(images.picture(3, (4000, 3000)), "JPEG", quality=80, exif=exif.tobytes())
    decoded = decode_image(data, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == size
    assert max(decoded.image.size) < 4000
    assert (decoded.image.width > decoded.image.height) == (size[0] > size[1])


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                           ("1", "PNG"), ("CMYK", "JPEG"), ("RGBA", "WEBP")])
def test_every_mode_becomes_rgb(mode, fmt):
    decoded = decode_image(images.encode(images.picture(1).convert(mode), fmt), max_pixels=LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (320, 240)


def test_a_16_bit_png_is_scaled_to_8_bits():
    ramp = (np.arange(256 * 16, dtype=np.uint32).reshape(16, 256) * 16).astype(np.uint16)
    decoded = decode_image(images.encode(Image.fromarray(ramp), "PNG"), max_pixels=LIMIT)
    pixels = np.asarray(decoded.image)
    assert decoded.image.mode == "RGB"
    assert pixels.max() > 200, "16-bit values are scaled, not clipped to white"
    assert pixels[0, 0, 0] < pixels[-1, -1, 0]


def test_transparency_is_flattened_onto_white():
    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    pixel = decode_image(images.encode(transparent, "PNG"), max_pixels=LIMIT).image.getpixel((5, 5))
    assert pixel == (255, 255, 255)


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    red, _, blue = decode_image(buffer.getvalue(), max_pixels=LIMIT).image.getpixel((10, 10))
    assert red > 200 and blue < 50


def test_a_one_pixel_image_is_accepted():
    assert decode_image(images.encode(Image.new("RGB", (1, 1)), "PNG"), max_pixels=LIMIT).image.size == (1, 1)


def test_the_served_copy_has_no_metadata_and_no_trailing_payload():
    exif = Image.Exif()
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # a GPS latitude
    data = images.encode(images.picture(1), "JPEG", exif=exif.tobytes()) + b"<script>alert(1)</script>"
    for copy in served_copies(decode_image(data, max_pixels=LIMIT).image):
        reopened = Image.open(io.BytesIO(copy))
        assert not reopened.getexif()
        assert b"<script>" not in copy
        assert copy.endswith(b"\xff\xd9")


def served_copies(picture: Image.Image) -> tuple[bytes, bytes]:
    return display_jpeg(picture), thumbnail_jpeg(picture)


def test_a_re_encoded_copy_is_no_larger_than_asked():
    copy = encode_jpeg(images.picture(1, size=(3000, 1000)), max_side=400)
    assert Image.open(io.BytesIO(copy)).size == (400, 133)


def test_the_served_copies_of_a_large_photo_keep_its_shape_and_look_as_lanczos_would():
    picture = images.picture(1, size=(3000, 2000))
    display, thumbnail = (Image.open(io.BytesIO(copy)) for copy in served_copies(picture))
    assert (display.size, thumbnail.size) == ((1600, 1067), (400, 267))
    lanczos = Image.open(io.BytesIO(encode_jpeg(picture, max_side=1600, quality=88)))
    error = np.mean((np.asarray(display, dtype=float) - np.asarray(lanczos, dtype=float)) ** 2)
    assert 10 * np.log10(255**2 / error) > 40


def test_a_small_picture_is_served_at_its_own_size():
    display, thumbnail = served_copies(images.picture(1, size=(320, 240)))
    assert Image.open(io.BytesIO(display)).size == Image.open(io.BytesIO(thumbnail)).size == (320, 240)


def test_the_worker_decodes_a_large_jpeg_at_the_smallest_scale_that_covers_the_thumbnail_and_the_model(tmp_path):
    path = tmp_path / "large.jpg"
    path.write_bytes(images.jpeg(1, size=(4000, 3000)))
    decoded = decode_image(path, max_pixels=LIMIT, max_side=400, min_side=224)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (500, 375), "an eighth: the largest reduction whose sides still cover 400 x 300"
    assert (decoded.width, decoded.height) == (4000, 3000)
    narrow = decode_image(images.jpeg(2, size=(4000, 500)), max_pixels=LIMIT, max_side=400, min_side=224)
    assert narrow.image.size == (2000, 250), "a half: the short side must still cover the model's 224"


def test_a_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageRejected) as error:
        decode_image(tmp_path / "gone.jpg", max_pixels=LIMIT)
    assert error.value.code == "unreadable"


class TestTheHeaderAlone:
    def test_it_gives_the_format_and_the_upright_size_without_decoding(self):
        exif = Image.Exif()
        exif[0x0112] = 6
        header = read_header(images.encode(images.picture(1), "JPEG", exif=exif.tobytes()), max_pixels=LIMIT)
        assert (header.format, header.width, header.height) == ("JPEG", 240, 320)

    @pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
    def test_a_file_cut_after_its_header_passes_it_and_is_refused_as_damaged_when_decoded(self, fmt):
        data = images.encode(images.picture(1, size=(640, 480)), fmt)
        cut = data[: len(data) // 2]
        assert read_header(cut, max_pixels=LIMIT).width == 640
        assert rejected(cut).code == "damaged"

    @pytest.mark.parametrize(("data", "code"), [
        (b"", "empty"),
        (b"MZ\x90\x00 a program" * 10, "not_an_image"),
        (images.encode(images.picture(1), "BMP"), "unsupported_format"),
        (images.jpeg(1)[:40], "damaged"),
        (images.png_header_claiming(50_000, 50_000), "too_many_pixels"),
        (images.animation("GIF", 1001, size=(8, 8)), "too_many_frames"),
    ])
    def test_what_a_header_shows_is_refused_with_the_codes_of_a_full_decode(self, data, code):
        with pytest.raises(ImageRejected) as error:
            read_header(data, max_pixels=LIMIT)
        assert error.value.code == code == rejected(data).code


def test_a_multi_picture_jpeg_from_a_camera_is_a_jpeg():
    buffer = io.BytesIO()
    images.picture(1).save(buffer, "MPO", save_all=True, append_images=[images.picture(2)])
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert decoded.format == "JPEG"
    assert decoded.image.size == (320, 240)


def test_the_served_copy_leaves_out_the_jpeg_comment():
    data = images.encode(images.picture(1), "JPEG", comment=b"written by the camera owner")
    for copy in served_copies(decode_image(data, max_pixels=LIMIT).image):
        assert b"camera owner" not in copy


@pytest.mark.parametrize("picture", [images.picture(3, size=(200, 150)), images.picture(4, size=(2400, 1800)),
                                     Image.open(images.bench_image("cat", 1)).convert("RGB")],
                         ids=["small", "large", "photo"])
def test_the_display_copys_pixels_are_those_of_the_display_copy_as_stored(picture):
    stored = np.asarray(Image.open(io.BytesIO(display_jpeg(picture))).convert("RGB"))
    assert np.array_equal(np.asarray(display_jpeg_pixels(picture)), stored)
