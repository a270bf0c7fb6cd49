"""Hostile and odd files sent through the web upload, the upload service and the importer."""
import io
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import RequestFactory, TestCase
from django.urls import reverse
from PIL import Image as PILImage
from PIL import PngImagePlugin

from core.imaging import MAX_FRAMES, ImageRejected, decode_image
from gallery import views
from gallery.copies import images_make_display_copies as make_display_copies
from gallery.models import Image
from gallery.services import image_upload, images_reembed
from search.models import Embedding, IndexChange
from search.services import image_embed
from tests import images
from tests.conftest import PROJECT_ROOT, media_files, store_indexed, upload_file
from tests.core.test_fuzz_decode import SITE_REFUSALS

HOSTILE = images.BENCH_IMAGES.parent / "hostile"
GENERATED_NAME = re.compile(r"^(originals|display|thumbs)/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}\.[a-z]{3,4}$")


def halved(data: bytes) -> bytes:
    return data[: len(data) // 2]


def post(client, *files, **extra):
    return client.post(reverse("gallery:upload"), {"files": list(files)}, HTTP_ACCEPT="application/json", **extra)


def served(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, url
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Type"] == "image/jpeg"
    return b"".join(response.streaming_content)


def served_copies(client, image: Image) -> list[bytes]:
    """The copies the worker makes of an uploaded image, as the site serves them."""
    embed_queued()
    make_display_copies(image_ids=[image.pk])
    image.refresh_from_db()
    return [served(client, image.display.url), served(client, image.thumbnail.url)]


def stored_picture(name: str) -> PILImage.Image:
    """A stored file, read through the media storage and opened by Pillow."""
    with default_storage.open(name, "rb") as file:
        return PILImage.open(io.BytesIO(file.read()))


def upright_picture() -> PILImage.Image:
    """A picture whose top half differs from its bottom half, so that a turn shows."""
    picture = images.picture(7, size=(320, 240))
    picture.paste((250, 20, 20), (0, 0, 320, 60))
    return picture


class TestRefusedThroughTheWeb:
    @pytest.mark.parametrize(("name", "data", "content_type", "code"), [
        ("holiday.jpg", b"MZ\x90\x00 a program, not a picture" * 20, "image/jpeg", "not_an_image"),
        ("lying.png", b"<html><body>hello</body></html>", "image/png", "not_an_image"),
        ("script.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "image/svg+xml",
         "unsupported_format"),
        ("script-as.jpg", b'<?xml version="1.0"?><svg><script>alert(1)</script></svg>', "image/jpeg",
         "unsupported_format"),
        ("cut-header.jpg", images.jpeg(1)[:40], "image/jpeg", "damaged"),
        ("empty.jpg", b"", "image/jpeg", "empty"),
        ("flood.png", images.png_header_claiming(50_000, 50_000), "image/png", "too_many_pixels"),
        ("flood.jpg", images.jpeg_header_claiming(50_000, 50_000), "image/jpeg", "too_many_pixels"),
        ("frames.gif", images.animation("GIF", MAX_FRAMES + 1, size=(8, 8)), "image/gif", "too_many_frames"),
    ])
    def test_each_is_refused_with_its_reason_and_leaves_nothing(self, alice_client, name, data, content_type, code):
        before = media_files()
        [result] = post(alice_client, upload_file(name, data, content_type)).json()["results"]
        assert (result["status"], result["code"]) == ("refused", code)
        assert result["message"]
        assert not Image.objects.exists()
        assert media_files() == before

    def test_the_content_type_a_client_claims_is_ignored(self, alice_client):
        [result] = post(alice_client, upload_file("photo.jpg", images.png(3), "text/html")).json()["results"]
        assert result["status"] == "accepted"
        assert Image.objects.get().format == "PNG"


def embed_queued() -> None:
    """What the embedding workers do with every queued image, run in this process (with what each
    run leaves to do once it commits, such as removing files)."""
    for image_id in list(Image.objects.filter(state=Image.State.QUEUED).order_by("id").values_list("id", flat=True)):
        if Image.objects.filter(pk=image_id, state=Image.State.QUEUED).exists():
            with TestCase.captureOnCommitCallbacks(execute=True):
                image_embed(image_id=image_id, claim_token=f"test-{image_id}")


class TestDamagedFoundByTheWorker:
    """A file whose header is sound but whose pixels are not is stored, then refused by the
    worker's decode with the code and reason the upload would have given, and leaves nothing."""

    @pytest.mark.parametrize(("name", "data", "content_type"), [
        ("cut.jpg", halved(images.jpeg(1, size=(640, 480))), "image/jpeg"),
        ("cut.png", halved(images.png(1, size=(640, 480))), "image/png"),
    ])
    def test_it_fails_with_the_upload_refusal_and_leaves_nothing(self, alice_client, name, data, content_type,
                                                                 media_storage):
        with pytest.raises(ImageRejected) as refusal:
            decode_image(data, max_pixels=60_000_000)
        before = media_files()
        [result] = post(alice_client, upload_file(name, data, content_type)).json()["results"]
        assert result["status"] == "accepted"
        embed_queued()

        image = Image.objects.get(pk=result["image"]["id"])
        assert (image.state, image.error_code, image.error) == ("failed", "damaged", refusal.value.message)
        assert media_files() == before, "its original is removed, and no copy was made"
        assert not Embedding.objects.exists() and not IndexChange.objects.filter(image_id=image.pk).exists()
        [shown] = alice_client.get(reverse("gallery:states") + f"?ids={image.pk}").json()["images"]
        assert (shown["state"], shown["error_code"], shown["error"]) == ("failed", "damaged", refusal.value.message)
        assert alice_client.get(reverse("gallery:original", args=[image.pk])).status_code == 404
        page = alice_client.get(reverse("gallery:detail", args=[image.pk])).content.decode()
        assert "cannot be decoded" in page and "Download original" not in page

    def test_an_image_embedded_before_leaves_search_when_its_file_is_found_damaged(self, db, media_storage):
        data = images.jpeg(2, size=(640, 480))
        before = media_files()
        image = store_indexed(data)
        assert Embedding.objects.filter(image=image).exists()
        default_storage.delete(image.original.name)
        assert default_storage.save(image.original.name, ContentFile(halved(data))) == image.original.name
        images_reembed(image_ids=[image.pk])
        embed_queued()
        image.refresh_from_db()
        assert (image.state, image.error_code) == ("failed", "damaged")
        assert not Embedding.objects.filter(image_id=image.pk).exists()
        assert IndexChange.objects.filter(image_id=image.pk, kind=IndexChange.Kind.REMOVE).exists()
        assert media_files() == before


class TestBombsStayBounded:
    def test_floods_and_frame_bombs_are_refused_with_little_memory(self, tmp_path):
        """Decoded in a process that cannot get more than 1 GiB: one 50,000 by 50,000 frame needs 7.5."""
        bombs = {"flood.png": images.png_header_claiming(50_000, 50_000),
                 "flood.jpg": images.jpeg_header_claiming(50_000, 50_000),
                 "frames.gif": images.animation("GIF", 3000, size=(200, 200))}
        for name, data in bombs.items():
            (tmp_path / name).write_bytes(data)
        script = (
            "import resource, sys\n"
            "from pathlib import Path\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from core.imaging import ImageRejected, decode_image\n"
            "for path in sorted(Path(sys.argv[1]).iterdir()):\n"
            "    try:\n"
            "        decode_image(path.read_bytes(), max_pixels=60_000_000)\n"
            "        print(path.name, 'accepted')\n"
            "    except ImageRejected as error:\n"
            "        print(path.name, error.code)\n"
        )
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split("\n")[:3] == ["flood.jpg too_many_pixels", "flood.png too_many_pixels",
                                              "frames.gif too_many_frames"]


class TestOverTheSizeLimit:
    def test_the_request_is_answered_413_and_nothing_is_stored(self, alice_client, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 20_000
        small, big = images.jpeg(1, size=(64, 64)), images.jpeg(2, size=(1200, 900))
        assert len(small) < 20_000 < len(big)
        response = post(alice_client, upload_file("small.jpg", small), upload_file("big.jpg", big))
        assert response.status_code == 413
        assert response.json() == {
            "code": "too_large",
            "message": "big.jpg is too large: nothing from this upload was stored. Each file may be at most "
                       "19.5\xa0KB.",
        }
        assert not Image.objects.exists()

    def test_the_page_says_so_without_javascript(self, alice_client, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 20_000
        response = alice_client.post(reverse("gallery:upload"),
                                     {"files": [upload_file("big.jpg", images.jpeg(2, size=(1200, 900)))]})
        assert response.status_code == 413
        assert "big.jpg is too large: nothing from this upload was stored" in response.content.decode()

    def test_a_body_larger_than_any_allowed_upload_is_refused_before_it_is_read(self, alice_client, settings):
        settings.LOOKALIKE_MAX_UPLOAD_BYTES, settings.LOOKALIKE_MAX_UPLOAD_FILES = 1000, 2
        response = post(alice_client, upload_file("a.jpg", images.jpeg(1)), upload_file("b.jpg", images.jpeg(2)),
                        CONTENT_LENGTH="10000000")
        assert response.status_code == 413
        assert response.json()["message"].startswith("The upload is too large")

    def test_no_temporary_file_is_left_behind(self, user, settings, tmp_path):
        """The file that passed the limit is dropped while it streams in; the earlier one lasts
        only until the request is closed."""
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = 20_000
        settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every file is spooled to a temporary file
        settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
        small, big = images.jpeg(1, size=(64, 64)), images.jpeg(2, size=(1200, 900))
        request = RequestFactory().post(reverse("gallery:upload"), {
            "files": [upload_file("small.jpg", small), upload_file("big.jpg", big)]})
        request.user = user
        request._dont_enforce_csrf_checks = True
        assert views.upload(request).status_code == 413
        [spooled] = list(tmp_path.iterdir())
        assert spooled.read_bytes() == small
        request.close()
        assert list(tmp_path.iterdir()) == []

    def test_a_file_of_exactly_the_limit_is_accepted(self, alice_client, settings):
        data = images.jpeg(3)
        settings.LOOKALIKE_MAX_UPLOAD_BYTES = len(data)
        [result] = post(alice_client, upload_file("exact.jpg", data)).json()["results"]
        assert result["status"] == "accepted"


class TestTooManyFiles:
    def test_more_files_than_django_would_parse_get_the_same_clear_answer(self, alice_client, settings):
        settings.LOOKALIKE_MAX_UPLOAD_FILES, settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2, 4
        files = [upload_file(f"{i}.jpg", images.jpeg(i, size=(32, 32))) for i in range(5)]
        response = post(alice_client, *files)
        assert response.status_code == 400
        assert response.json() == {"code": "too_many_files", "message": "Send at most 2 files at a time."}
        assert not Image.objects.exists()


class TestPayloadsNeverReachABrowser:
    @pytest.mark.parametrize("payload", [b"<html><script>alert(document.cookie)</script></html>",
                                         b"<?php system($_GET['c']); ?>"])
    def test_a_payload_after_a_valid_png_is_kept_out_of_every_served_copy(self, alice_client, user, payload,
                                                                          media_storage):
        data = images.png(4) + payload
        [result] = post(alice_client, upload_file("a.php.png", data, "image/png")).json()["results"]
        image = Image.objects.get(pk=result["image"]["id"])
        for copy in served_copies(alice_client, image):
            assert payload not in copy
            assert copy.startswith(b"\xff\xd8") and copy.endswith(b"\xff\xd9")
        assert alice_client.get("/media/" + image.original.name).status_code == 404
        original = alice_client.get(reverse("gallery:original", args=[image.pk]))
        assert original["Content-Type"] == "image/png"
        assert original["Content-Disposition"].startswith("attachment")
        assert original["X-Content-Type-Options"] == "nosniff"

    def test_metadata_is_absent_from_every_served_copy(self, alice_client, media_storage):
        exif = PILImage.Exif()
        exif[0x010F] = "SecretCameraMaker"
        exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 17.0, 40.0)}
        jpeg = images.encode(images.picture(5), "JPEG", exif=exif.tobytes(),
                             xmp=b"<x:xmpmeta>SecretXmpNote</x:xmpmeta>", comment=b"SecretComment")
        info = PngImagePlugin.PngInfo()
        info.add_text("XML:com.adobe.xmp", "<x:xmpmeta>SecretXmpNote</x:xmpmeta>")
        info.add_text("Comment", "SecretComment")
        png = images.encode(images.picture(6), "PNG", pnginfo=info, exif=exif.tobytes())
        results = post(alice_client, upload_file("gps.jpg", jpeg), upload_file("gps.png", png, "image/png")).json()
        for result in results["results"]:
            image = Image.objects.get(pk=result["image"]["id"])
            assert b"SecretCameraMaker" in image.original.read(), "the original keeps it, for its owner only"
            for copy in served_copies(alice_client, image):
                for secret in (b"SecretCameraMaker", b"SecretXmpNote", b"SecretComment", b"Exif\x00\x00", b"xmpmeta"):
                    assert secret not in copy
                assert not PILImage.open(io.BytesIO(copy)).getexif()


class TestOddButAccepted:
    @pytest.mark.parametrize(("name", "data", "size"), [
        ("cmyk.jpg", images.encode(images.picture(1).convert("CMYK"), "JPEG"), (320, 240)),
        ("deep.png", images.encode(PILImage.fromarray(
            (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)), "PNG"), (64, 64)),
        ("palette.png", images.encode(images.picture(2).convert("P"), "PNG", transparency=0), (320, 240)),
        ("la.png", images.encode(images.picture(3).convert("LA"), "PNG"), (320, 240)),
        ("dot.png", images.encode(PILImage.new("RGB", (1, 1), (9, 99, 199)), "PNG"), (1, 1)),
        ("panorama.jpg", images.jpeg(4, size=(12_000, 60)), (12_000, 60)),
        ("moving.gif", images.animation("GIF", 12), (32, 32)),
        ("moving.webp", images.animation("WEBP", 12), (32, 32)),
    ])
    def test_it_is_stored_and_embedded(self, db, name, data, size, media_storage):
        image = store_indexed(data, name)
        assert (image.width, image.height) == size
        assert Embedding.objects.filter(image=image).count() == 1
        for copy in (image.display, image.thumbnail):
            assert stored_picture(copy.name).mode == "RGB"

    @pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
    def test_an_animation_is_shown_by_its_first_frame(self, db, fmt):
        image = store_indexed(images.animation(fmt, 12), f"moving.{fmt.lower()}")
        red, _, blue = stored_picture(image.display.name).convert("RGB").getpixel((16, 16))
        assert red > 200 and blue < 60


class TestOrientation:
    @pytest.mark.parametrize(("orientation", "stored_turn"), [
        (6, PILImage.Transpose.ROTATE_90), (8, PILImage.Transpose.ROTATE_270)])
    def test_thumbnails_and_vectors_use_the_upright_picture(self, db, orientation, stored_turn):
        upright = upright_picture()
        sideways = upright.transpose(stored_turn)
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        turned = store_indexed(images.encode(sideways, "JPEG", quality=95, exif=exif.tobytes()), "turned.jpg")
        reference = store_indexed(images.encode(upright, "JPEG", quality=94), "upright.jpg")
        unturned = store_indexed(images.encode(sideways, "JPEG", quality=93), "sideways.jpg")

        assert (turned.width, turned.height) == (320, 240)
        thumb = np.asarray(stored_picture(turned.thumbnail.name).convert("RGB"), dtype=np.float32)
        expected = np.asarray(upright, dtype=np.float32)
        assert thumb.shape == expected.shape
        assert np.abs(thumb - expected).mean() < 8

        def vector(image: Image) -> np.ndarray:
            return Embedding.objects.get(image=image).as_array()

        assert vector(turned) @ vector(reference) > 0.97
        assert vector(turned) @ vector(reference) > vector(unturned) @ vector(reference) + 0.02


class TestNames:
    @pytest.mark.parametrize(("given", "shown"), [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("a.php.jpg", "a.php.jpg"),
        ("x" * 300 + ".jpg", "x" * 251 + ".jpg"),
        ('<img src=x onerror="alert(1)">.jpg', '<img src=x onerror="alert(1)">.jpg'),
    ])
    def test_files_are_stored_under_generated_names_and_the_name_is_shown_escaped(
            self, alice_client, given, shown):
        response = alice_client.post(reverse("gallery:upload"), {"files": [upload_file(given, images.jpeg(8))]})
        image = Image.objects.get()
        assert image.original_name == shown
        embed_queued()
        make_display_copies(image_ids=[image.pk])
        image.refresh_from_db()
        for field in (image.original, image.display, image.thumbnail):
            assert GENERATED_NAME.match(field.name), field.name
        for body in (response.content.decode(),
                     alice_client.get(reverse("gallery:detail", args=[image.pk])).content.decode()):
            assert "<img src=x" not in body
        assert "<img src=x" not in alice_client.get(reverse("gallery:index")).content.decode()

    def test_a_nul_byte_never_reaches_a_path(self, db):
        result = image_upload(source=io.BytesIO(images.jpeg(9)), original_name="evil\x00.php\x00.jpg", owner=None)
        assert result.image.original_name == "evil.php.jpg"
        assert "\x00" not in result.image.original.name
        assert GENERATED_NAME.match(result.image.original.name)


@pytest.mark.skipif(not HOSTILE.is_dir(), reason="needs ../shared/bench/hostile beside the project")
@pytest.mark.timeout(1200)
def test_every_hostile_file_is_stored_or_refused_with_a_reason(db, settings):
    settings.LOOKALIKE_EMBED_BATCH_SIZE = 32
    outcomes: dict[str, int] = {}
    for path in sorted(p for p in HOSTILE.rglob("*") if p.is_file()):
        with path.open("rb") as source:
            result = image_upload(source=source, original_name=path.name, owner=None)
        assert result.status in {"accepted", "duplicate", "refused"}
        if result.status == "refused":
            assert result.code and result.message, path.name
        outcomes[result.status] = outcomes.get(result.status, 0) + 1
    assert outcomes.get("accepted", 0) > 100 and outcomes.get("refused", 0) > 100, outcomes
    # Then through the worker's decode: each is embedded, or refused by it as an upload would be.
    embed_queued()
    make_display_copies(image_ids=list(Image.objects.values_list("id", flat=True)))
    settled = Counter(Image.objects.values_list("state", flat=True))
    assert set(settled) <= {Image.State.INDEXED, Image.State.FAILED}, settled
    assert settled[Image.State.INDEXED] > 100, settled
    for image in Image.objects.filter(state=Image.State.FAILED):
        assert image.error_code in SITE_REFUSALS and image.error, image.original_name
        assert not (image.original or image.thumbnail or image.display)
    for image in Image.objects.filter(state=Image.State.INDEXED):
        assert Embedding.objects.filter(image=image).count() == 1
        for copy in (image.display, image.thumbnail):
            assert stored_picture(copy.name).format == "JPEG"
