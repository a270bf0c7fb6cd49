"""The framings a query is searched in: the whole picture and the inside of a plain frame, each with its
mirror image."""
import io

from PIL import Image, ImageDraw, ImageOps

from core.query_views import box_overlap, picture_boxes, plain_frame_box, query_framings, second_look_views
from tests import images


def photo() -> Image.Image:
    return Image.open(images.bench_image("cat", 1)).convert("RGB")


def framed(picture: Image.Image, border: int, colour=(40, 90, 200)) -> Image.Image:
    return ImageOps.expand(picture, border=border, fill=colour)


def test_it_finds_the_inside_of_a_plain_border():
    inner = photo()
    assert plain_frame_box(framed(inner, 40)) == (40, 40, 40 + inner.width, 40 + inner.height)


def test_it_finds_a_frame_through_jpeg_noise():
    inner = photo()
    noisy = Image.open(io.BytesIO(images.encode(framed(inner, 50), "JPEG", quality=30))).convert("RGB")
    left, top, right, bottom = plain_frame_box(noisy)
    # JPEG smears the edge of the picture into the frame, up to the end of an 8-pixel block.
    assert 34 <= left <= 50 and 34 <= top <= 50
    assert 50 + inner.width <= right <= 66 + inner.width and 50 + inner.height <= bottom <= 66 + inner.height


def test_a_caption_in_the_frame_keeps_the_rows_it_crosses_only():
    inner = photo()
    picture = framed(inner, 50, colour=(250, 250, 250))
    draw = ImageDraw.Draw(picture)
    draw.text((5, 10), "SAMPLE", fill=(0, 0, 0))
    left, top, right, bottom = plain_frame_box(picture)
    # The caption's rows are not plain, but in each column it crosses it is a few pixels only.
    assert top <= draw.textbbox((5, 10), "SAMPLE")[1]
    assert (left, right, bottom) == (50, 50 + inner.width, 50 + inner.height)


def test_on_a_large_picture_it_measures_a_reduced_copy_and_never_cuts_into_the_picture():
    inner = photo().resize((2400, 1800))
    left, top, right, bottom = plain_frame_box(framed(inner, 300))
    # The reduced copy has blocks of 11 pixels; the cut stops one block short of the picture.
    assert 300 - 2 * 11 <= left <= 300 and 300 - 2 * 11 <= top <= 300
    assert 300 + 2400 <= right <= 300 + 2400 + 2 * 11 and 300 + 1800 <= bottom <= 300 + 1800 + 2 * 11


def test_it_finds_a_frame_on_some_sides_only():
    inner = photo()
    picture = framed(inner, 60).crop((0, 60, 60 + inner.width, 60 + inner.height))  # left only
    assert plain_frame_box(picture) == (60, 0, picture.width, picture.height)


def test_a_thin_edge_is_no_frame():
    assert plain_frame_box(framed(photo(), 2)) is None


def test_a_photo_without_plain_edges_has_no_frame():
    assert plain_frame_box(photo()) is None


def test_a_picture_of_one_colour_has_no_frame():
    assert plain_frame_box(Image.new("RGB", (300, 200), (7, 7, 7))) is None
    stripe = Image.new("RGB", (300, 200), (7, 7, 7))
    stripe.paste((200, 30, 30), (0, 95, 300, 105))
    assert plain_frame_box(stripe) is None


def test_a_frame_leaves_at_least_a_few_pixels():
    picture = Image.new("RGB", (40, 40), (7, 7, 7))
    picture.paste((200, 30, 30), (16, 14, 22, 26))
    assert plain_frame_box(picture) is None


def test_a_framed_picture_is_searched_whole_and_inside_its_frame():
    inner = photo()
    framings = query_framings(framed(inner, 40))
    assert [[view.size for view in pair] for pair in framings] == [[(inner.width + 80, inner.height + 80)] * 2,
                                                                  [inner.size] * 2]
    assert framings[1][1].tobytes() == ImageOps.mirror(inner).tobytes()


def test_a_picture_without_a_frame_is_searched_as_itself_and_its_mirror_image():
    picture = photo()
    [(whole, mirrored)] = query_framings(picture)
    assert whole is picture and mirrored.tobytes() == ImageOps.mirror(picture).tobytes()


def test_views_are_rgb_whatever_the_picture_mode():
    # A colour of the web palette, which a conversion to "P" keeps without dithering.
    for mode in ("L", "RGBA", "P", "CMYK"):
        framings = query_framings(framed(photo(), 40, colour=(0, 102, 204)).convert(mode))
        assert len(framings) == 2 and {view.mode for pair in framings for view in pair} == {"RGB"}


def screenshot(picture: Image.Image, *, at: tuple[int, int], width: int) -> Image.Image:
    """A light web page with a coloured bar, lines of text, two other pictures and ``picture``
    shrunk to ``width`` at ``at``."""
    page = Image.new("RGB", (1280, 800), (242, 242, 242))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 1280, 56), fill=(30, 90, 160))
    for line in range(24):
        x, y = (line * 397) % 900, 80 + line * 29
        draw.rectangle((x, y, x + 120 + (line * 131) % 360, y + 7), fill=(40, 40, 40))
    page.paste(images.picture(7, (90, 90)), (1100, 120))
    page.paste(images.picture(8, (160, 100)), (40, 620))
    shrunk = picture.resize((width, round(picture.height * width / picture.width)))
    page.paste(shrunk, at)
    return page


def test_it_finds_a_photo_inside_a_screenshot():
    inner = photo()
    width = 240
    height = round(inner.height * width / inner.width)
    boxes = picture_boxes(screenshot(inner, at=(520, 300), width=width))
    # The cat's white chest against the light page is hardly an edge: the box may run on to the line
    # of text 13 pixels below the photo, and is the photo give or take that strip.
    assert max((box_overlap(box, (520, 300, 520 + width, 300 + height)) for box in boxes), default=0.0) >= 0.9, boxes


def pasted(picture: Image.Image, *, at: tuple[int, int]) -> Image.Image:
    """``picture`` pasted onto stripes of colours about as bright as a photo's edges, with discs
    across them: a background that differs from it in hue more than in brightness."""
    page = Image.new("RGB", (700, 560))
    draw = ImageDraw.Draw(page)
    for stripe in range(14):
        draw.rectangle((0, stripe * 40, 700, stripe * 40 + 40), fill=[(150, 110, 60), (60, 140, 110)][stripe % 2])
    for x, y, r in ((80, 60, 70), (560, 420, 90), (420, 40, 50)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(200, 60, 160))
    page.paste(picture, at)
    return page


def test_it_finds_a_photo_pasted_on_a_background_that_differs_from_it_in_hue_more_than_in_brightness():
    boxes = picture_boxes(pasted(photo().resize((300, 252)), at=(210, 170)))
    assert max((box_overlap(box, (210, 170, 510, 422)) for box in boxes), default=0.0) >= 0.9, boxes


def test_a_photo_on_its_own_holds_no_box_as_large_as_itself():
    inner = photo()
    assert all((right - left) * (bottom - top) < 0.9 * inner.width * inner.height
               for left, top, right, bottom in picture_boxes(inner))


def test_the_second_look_is_the_quarter_turns_then_the_pictures_inside():
    inner = photo()
    page = screenshot(inner, at=(520, 300), width=240)
    views = second_look_views(page)
    assert [view.size for view in views[:3]] == [(800, 1280), (1280, 800), (800, 1280)]
    assert views[1].tobytes() == page.transpose(Image.Transpose.ROTATE_180).tobytes()
    assert [view.size for view in views[3:]] == [(right - left, bottom - top)
                                                  for left, top, right, bottom in picture_boxes(page)]
    assert {view.mode for view in second_look_views(inner.convert("L"))} == {"RGB"}
