"""Media in the object store: django-storages' S3 backend on a bucket of the real gateway (bin/ceph-gateway)."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
from django.conf import settings
from django.core.files.storage import storages
from django.urls import reverse
from PIL import Image as PILImage

from config.media_storage import MediaStorage
from config.object_store import object_store_client
from gallery.models import Image
from tests import images
from tests.conftest import PROJECT_ROOT, media_files, process_env, store_indexed, upload_file


def default_backend(**env: str) -> str:
    """The default storage that the settings choose in a process started with ``env``."""
    code = "from django.conf import settings; print(settings.STORAGES['default']['BACKEND'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env={**process_env(), **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.strip()


def unsigned_get(bucket: str, key: str) -> int:
    """The status of a GET of an object's address on the gateway by someone with no credentials."""
    try:
        with urllib.request.urlopen(f"{settings.LOOKALIKE_S3_ENDPOINT_URL}/{bucket}/{key}") as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_it_is_the_default_storage_with_a_bucket_and_files_on_disk_without_one(db):
    assert default_backend(LOOKALIKE_S3_BUCKET="photos") == "config.media_storage.MediaStorage"
    assert default_backend(LOOKALIKE_S3_BUCKET="") == "django.core.files.storage.FileSystemStorage"


def test_it_takes_the_object_store_settings(s3_media):
    storage = storages["default"]
    assert isinstance(storage, MediaStorage)
    assert (storage.bucket_name, storage.endpoint_url, storage.region_name) == (
        s3_media, settings.LOOKALIKE_S3_ENDPOINT_URL, settings.LOOKALIKE_S3_REGION)
    assert (storage.default_acl, storage.querystring_auth, storage.file_overwrite) == (None, True, True)
    assert storage.client_config.signature_version == "s3v4"
    assert storage.client_config.s3 == {"addressing_style": "path"}


def test_every_stored_file_is_private_and_named_by_the_sites_address(db, s3_media):
    image = store_indexed(images.jpeg(1), "private.jpg")
    names = media_files()
    assert names == {image.original.name, image.thumbnail.name, image.display.name}
    client = object_store_client()
    for name in names:
        grants = client.get_object_acl(Bucket=s3_media, Key=name)["Grants"]
        assert [(grant["Grantee"]["Type"], grant["Permission"]) for grant in grants] == [
            ("CanonicalUser", "FULL_CONTROL")], f"{name}: the bucket's owner alone"
        assert unsigned_get(s3_media, name) == 403, name
    # The addresses the pages use are the site's, which checks who may see the image, never the store's.
    assert [image.original.url, image.thumbnail_url, image.display_url] == [
        f"/media/{image.original.name}", f"/media/{image.thumbnail.name}", f"/media/{image.display.name}"]


def test_a_large_original_is_streamed_to_the_store_in_parts(s3_media, alice_client):
    noise = np.random.default_rng(1).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    data = images.encode(PILImage.fromarray(noise), "PNG", compress_level=1)
    assert len(data) > 9 * 1024 * 1024, "past boto3's multipart threshold of 8 MiB"
    reply = alice_client.post(reverse("gallery:upload"), {"files": [upload_file("noise.png", data, "image/png")]},
                              HTTP_ACCEPT="application/json")
    [result] = reply.json()["results"]
    assert result["status"] == "accepted", result
    image = Image.objects.get(pk=result["image"]["id"])
    head = object_store_client().head_object(Bucket=s3_media, Key=image.original.name)
    # A multipart upload's ETag is the digest of its parts' digests, followed by the number of parts.
    assert re.fullmatch(r'"[0-9a-f]{32}-2"', head["ETag"]), head["ETag"]
    assert head["ContentLength"] == len(data)
    downloaded = alice_client.get(reverse("gallery:original", args=[image.pk]))
    assert b"".join(downloaded.streaming_content) == data

