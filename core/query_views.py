"""The pictures a query is searched as. Free of Django.

A re-posted copy is often mirrored, or framed: a plain border added around it, a product photo
cut out of its white studio background. Each query is searched as itself and as its mirror
image, and, when its edges are a plain colour, as the picture inside that frame (and its mirror
image) too; search keeps each gallery image's best cosine over the views. The frame is only a
query's view: a gallery image keeps its whole picture, so a copy without the frame still finds it.

A query that none of those views finds a close image for gets a second look (``second_look_views``):
its quarter turns, and each picture inside it that straight edges bound on four sides, as a photo
in a screenshot of a web page or pasted onto another background is (``picture_boxes``).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_QUARTER_TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

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


# Pictures inside a query are looked for on a copy whose longer side is about this: a photo at a
# sixth of a desktop screenshot's width still spans some 50 pixels of it.
BOXES_MEASURED_SIDE = 320
# Two reduced pixels a line apart on either side of an edge differ by more than this (of 255) in
# some colour channel where the edge is strong: the edge of a photo against a page or a background,
# which may differ from it in hue more than in brightness.
STRONG_EDGE = 28.0
# A side of a box lies along a straight run of strong edge at least this share of the query's side
# (one of two facing sides at least; the other two need only the support below)...
MIN_EDGE_SHARE = 0.08
# ...and a box counts when this share of each of its four sides is strong edge: lower, a box
# reaches across the blank page from a photo to the edge of a bar or a line of text.
MIN_SIDE_SUPPORT = 0.85
# A box narrower or lower than this share of the query holds too little of it to search with; one
# covering more than this share of it is the query itself.
MIN_BOX_SHARE = 0.08
MAX_BOX_AREA = 0.9
# Boxes rank by their area times the share of their sides that is edge to this power: a box that
# runs on past a photo's edge, across blank page to the next line of text, is larger but less edge
# all round, and ranks below the photo's own box (a side 15 % blank costs as much as a quarter of
# the area).
EDGE_RANK_POWER = 2.0
# The best boxes are searched, this many at most, each overlapping the better ones by less than
# half (intersection over union): a photo's own straight edges make smaller boxes inside it.
MAX_BOXES = 3
MAX_BOX_OVERLAP = 0.5


def second_look_views(picture: Image.Image) -> list[Image.Image]:
    """The views of a query searched when its framings found nothing close: its quarter turns and the
    pictures inside it (``picture_boxes``), each a view on its own."""
    picture = picture if picture.mode == "RGB" else picture.convert("RGB")
    return [picture.transpose(turn) for turn in _QUARTER_TURNS] + [picture.crop(box) for box in picture_boxes(picture)]


def picture_boxes(picture: Image.Image) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of rectangles inside an RGB picture that strong straight
    edges bound on all four sides, best first (``EDGE_RANK_POWER``): a photo in a screenshot or
    pasted onto a background, an advertisement, a thumbnail.

    Two facing sides come from long straight runs of edge; the other two are any lines between
    them that are edge nearly all along, as the four sides must be. A line of text or a bar that
    runs on from a photo's edge then neither breaks the box nor makes it.
    """
    factor = max(1.0, max(picture.size) / BOXES_MEASURED_SIDE)
    reduced = picture if picture.mode == "RGB" else picture.convert("RGB")
    if factor > 1:
        reduced = reduced.resize((max(1, round(picture.width / factor)), max(1, round(picture.height / factor))),
                                 Image.Resampling.BOX)
    pixels = np.asarray(reduced, dtype=np.float32)
    height, width = pixels.shape[:2]
    # An edge between two lines of the reduced copy, measured a line either side of it: a sharp
    # edge of the picture may fall inside a reduced pixel.
    across_rows = np.zeros((height, width), dtype=np.float32)
    across_rows[1:-1] = np.abs(pixels[2:] - pixels[:-2]).max(axis=2)
    across_columns = np.zeros((height, width), dtype=np.float32)
    across_columns[:, 1:-1] = np.abs(pixels[:, 2:] - pixels[:, :-2]).max(axis=2)
    horizontal, vertical = across_rows > STRONG_EDGE, (across_columns > STRONG_EDGE).T
    min_width, min_height = max(8.0, MIN_BOX_SHARE * width), max(8.0, MIN_BOX_SHARE * height)
    support_rows, support_columns = _support_sums(horizontal), _support_sums(vertical)
    columns = _edge_lines(vertical, max(8, int(MIN_EDGE_SHARE * height)))
    rows = _edge_lines(horizontal, max(8, int(MIN_EDGE_SHARE * width)))
    found = set(_boxes_between(columns, support_rows, support_columns, min_width, min_height))
    found |= {(left, top, right, bottom) for top, left, bottom, right in
              _boxes_between(rows, support_columns, support_rows, min_height, min_width)}

    def rank(box: tuple[int, int, int, int]) -> float:
        left, top, right, bottom = box
        edge = min((support_rows[top, right] - support_rows[top, left]) / (right - left),
                   (support_rows[bottom, right] - support_rows[bottom, left]) / (right - left),
                   (support_columns[left, bottom] - support_columns[left, top]) / (bottom - top),
                   (support_columns[right, bottom] - support_columns[right, top]) / (bottom - top))
        return float((right - left) * (bottom - top) * edge ** EDGE_RANK_POWER)

    boxes = sorted((box for box in found if (box[2] - box[0]) * (box[3] - box[1]) <= MAX_BOX_AREA * width * height),
                   key=rank, reverse=True)
    kept: list[tuple[int, int, int, int]] = []
    for box in boxes:
        if len(kept) == MAX_BOXES:
            break
        if all(box_overlap(box, other) < MAX_BOX_OVERLAP for other in kept):
            kept.append(box)
    return [(round(left * factor), round(top * factor), min(picture.width, round(right * factor)),
             min(picture.height, round(bottom * factor))) for left, top, right, bottom in kept]


def _edge_lines(strong: np.ndarray, min_run: int) -> np.ndarray:
    """The lines of ``strong`` (rows of a boolean map) that hold a run of strong edge at least
    ``min_run`` long, one line for each group of adjacent ones."""
    closed = strong.copy()
    closed[:, 1:-1] |= strong[:, :-2] & strong[:, 2:]  # a pixel missing from an edge does not break it
    padded = np.zeros((closed.shape[0], closed.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = closed
    steps = np.diff(padded, axis=1)
    lines, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return _one_of_adjacent(np.unique(lines[ends - starts >= min_run]))


def _one_of_adjacent(lines: np.ndarray) -> np.ndarray:
    """One of each group of adjacent sorted lines: an edge measured a line either side of it shows
    on two or three, and the sides' support counts a line either side too."""
    if len(lines) == 0:
        return lines
    breaks = np.nonzero(np.diff(lines) > 1)[0]
    first = np.concatenate([[0], breaks + 1])
    last = np.concatenate([breaks, [len(lines) - 1]])
    middles: np.ndarray = (lines[first] + lines[last]) // 2
    return middles


def _boxes_between(lines: np.ndarray, across_sums: np.ndarray, along_sums: np.ndarray, min_gap: float,
                   min_span: float) -> list[tuple[int, int, int, int]]:
    """(low line, first cross line, high line, last cross line) of the boxes with two facing sides
    on ``lines`` (say, columns) and the other two on lines across them (rows) that are strong edge
    between those two; ``across_sums`` and ``along_sums``: ``_support_sums`` of the rows and of the
    columns."""
    found = []
    first, second = np.triu_indices(len(lines), 1)
    apart = lines[second] - lines[first] >= min_gap
    lows, highs = lines[first[apart]], lines[second[apart]]
    # For every pair at once, the cross lines that are edge between them: most pairs have none.
    spanned = (across_sums[:, highs] - across_sums[:, lows]) >= MIN_SIDE_SUPPORT * (highs - lows)
    for pair in np.nonzero(spanned.sum(axis=0) >= 2)[0].tolist():
        low, high = int(lows[pair]), int(highs[pair])
        crossing = _one_of_adjacent(np.nonzero(spanned[:, pair])[0])
        near, far = (crossing[index] for index in np.triu_indices(len(crossing), 1))
        tall = far - near >= min_span
        near, far = near[tall], far[tall]
        span = np.maximum(1, far - near)
        sides_hold = ((along_sums[low, far] - along_sums[low, near]) / span >= MIN_SIDE_SUPPORT) \
            & ((along_sums[high, far] - along_sums[high, near]) / span >= MIN_SIDE_SUPPORT)
        found += [(low, start, high, end) for start, end in zip(near[sides_hold].tolist(), far[sides_hold].tolist(),
                                                                 strict=True)]
    return found


def _support_sums(strong: np.ndarray) -> np.ndarray:
    """Running counts of strong edge along each line, a line either side included."""
    near = strong.copy()
    near[1:] |= strong[:-1]
    near[:-1] |= strong[1:]
    sums = np.zeros((near.shape[0], near.shape[1] + 1), dtype=np.int32)
    np.cumsum(near, axis=1, out=sums[:, 1:])
    return sums


def box_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    shared = width * height
    return shared / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - shared)
