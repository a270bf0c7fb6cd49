"""The pictures a query is searched as. Free of Django.

A re-posted copy is often mirrored, or framed: a plain border added around it, a product photo
cut out of its white studio background. Each query is searched as itself and as its mirror
image, and, when its edges are a plain colour, as the picture inside that frame (and its mirror
image) too; search keeps each gallery image's best cosine over the views. The frame is only a
query's view: a gallery image keeps its whole picture, so a copy without the frame still finds it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Two pixels differing by at most this much in every channel are the same plain colour: enough
# for JPEG noise, too little for a soft edge of the picture itself.
PLAIN_TOLERANCE = 10
# A row or column is frame when this share of its pixels has the frame's colour: a caption or a
# watermark may cross a frame.
PLAIN_SHARE = 0.97
# The frame is measured on a copy about this size: plenty for a border, cheap for a 12 MP upload.
MEASURED_SIDE = 256
# A side is cut by at most this share of the picture, and only a frame of at least this share on
# some side makes a view: thinner edges change the picture too little to be worth a search.
MAX_FRAME_SHARE = 0.45
MIN_FRAME_SHARE = 0.03
# Nothing narrower than this is left of a picture.
MIN_INNER_SIDE = 8
_BLOCK_ROWS = 16


def query_framings(picture: Image.Image) -> list[tuple[Image.Image, Image.Image]]:
    """The framings of a query, each as a picture and its mirror image: the whole query and,
    when it is framed, the inside of its frame."""
    picture = picture if picture.mode == "RGB" else picture.convert("RGB")
    framings = [(picture, ImageOps.mirror(picture))]
    inner = plain_frame_box(picture)
    if inner is not None:
        cropped = picture.crop(inner)
        framings.append((cropped, ImageOps.mirror(cropped)))
    return framings


def plain_frame_box(picture: Image.Image) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) inside the plain rows and columns at the edges of an
    RGB picture, or None when they are too thin to matter."""
    factor = max(1, max(picture.size) // MEASURED_SIDE)
    measured = picture.reduce(factor) if factor > 1 else picture
    pixels = np.asarray(measured, dtype=np.int16)
    height, width = pixels.shape[:2]
    most_rows, most_columns = int(height * MAX_FRAME_SHARE), int(width * MAX_FRAME_SHARE)
    top = _plain_lines(pixels, most_rows)
    bottom = _plain_lines(pixels[::-1], most_rows)
    left = _plain_lines(pixels.transpose(1, 0, 2), most_columns)
    right = _plain_lines(pixels.transpose(1, 0, 2)[::-1], most_columns)
    if max(top, bottom) < MIN_FRAME_SHARE * height and max(left, right) < MIN_FRAME_SHARE * width:
        return None
    if (top == bottom == most_rows) or (left == right == most_columns):
        return None  # a picture of one colour, or nearly: nothing is framed
    # A reduced pixel averages a block of the picture: the block at the frame's inner edge may hold
    # some of the picture, so the cut stops one block short of it.
    short = 1 if factor > 1 else 0
    left, top, right, bottom = (max(lines - short, 0) * factor for lines in (left, top, right, bottom))
    box = (left, top, picture.width - right, picture.height - bottom)
    if box[2] - box[0] < MIN_INNER_SIDE or box[3] - box[1] < MIN_INNER_SIDE:
        return None
    return box


def _plain_lines(pixels: np.ndarray, limit: int) -> int:
    """How many rows from the top of ``pixels`` (rows x columns x 3, int16), at most ``limit``,
    have the colour of the first row."""
    if limit <= 0:
        return 0
    colour = np.median(pixels[0], axis=0).round().astype(np.int16)
    # In blocks of rows, so that a photo without a frame costs one block.
    for start in range(0, limit, _BLOCK_ROWS):
        block = pixels[start:min(start + _BLOCK_ROWS, limit)]
        plain = (np.abs(block - colour).max(axis=2) <= PLAIN_TOLERANCE).mean(axis=1) >= PLAIN_SHARE
        if not plain.all():
            return start + int(np.argmin(plain))
    return limit
