"""Images made for the tests: distinct, reproducible pictures in any format or mode."""
from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

BENCH_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "images"


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A picture of random shapes on a random background: different seeds look different."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(10, w // 2), y0 + rng.randrange(10, h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (320, 240), **params: object) -> bytes:
    return encode(picture(seed, size), "JPEG", quality=90, **params)


def png(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    return encode(picture(seed, size), "PNG")


def bench_image(category: str, number: int) -> Path:
    return BENCH_IMAGES / category / f"{category}-{number:04d}.jpg"


def bench_crop(category: str, number: int, margin: int = 20, quality: int = 85) -> bytes:
    """A benchmark photo with 1/``margin`` of each side cropped off, re-compressed: an edited copy."""
    picture = Image.open(bench_image(category, number)).convert("RGB")
    w, h = picture.size
    return encode(picture.crop((w // margin, h // margin, w - w // margin, h - h // margin)), "JPEG", quality=quality)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a pixel flood."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pixels + chunk(b"IEND", b"")


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is rewritten to claim a huge size."""
    data = bytearray(jpeg(1, size=(64, 64)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animation(fmt: str, frames: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """An animation whose frames differ in colour, first frame red."""
    pictures = [Image.new("RGB", size, (255 - i % 256, 0, i % 256)) for i in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, fmt, save_all=True, append_images=pictures[1:], duration=40, loop=0)
    return buffer.getvalue()
