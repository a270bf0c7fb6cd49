"""Images made for the tests: distinct, reproducible pictures in any format or mode."""
from __future__ import annotations

import io
import random
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
