"""The object store client against the real S3 gateway (bin/ceph-gateway)."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError
from django.core.exceptions import ImproperlyConfigured

from config.env import env_choice
from config.object_store import object_store_bucket, object_store_client


def test_it_puts_gets_and_deletes(s3_bucket):
    client = object_store_client()
    client.put_object(Bucket=s3_bucket, Key="a/b.bin", Body=b"\x00picture")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.bin")["Body"].read() == b"\x00picture"
    client.delete_object(Bucket=s3_bucket, Key="a/b.bin")
    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=s3_bucket, Key="a/b.bin")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_it_is_configured_only_with_a_bucket(settings, s3_bucket):
    assert object_store_bucket() == s3_bucket
    settings.LOOKALIKE_S3_BUCKET = ""
    assert object_store_bucket() is None


def test_it_refuses_a_tampered_presigned_url_and_an_unsigned_one(s3_bucket):
    client = object_store_client()
    client.put_object(Bucket=s3_bucket, Key="secret.jpg", Body=b"original")
    client.put_object(Bucket=s3_bucket, Key="other.jpg", Body=b"someone else's")
    url = client.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "secret.jpg"},
                                        ExpiresIn=60)
    assert urllib.request.urlopen(url).read() == b"original"
    for refused in (url.replace("secret.jpg", "other.jpg"), url.replace("X-Amz-Expires=60", "X-Amz-Expires=6000"),
                    url.split("?", 1)[0]):
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(refused)
        assert answer.value.code == 403


def test_it_refuses_an_addressing_style_it_does_not_know(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(ImproperlyConfigured, match="LOOKALIKE_S3_ADDRESSING_STYLE='sideways' is not one of auto"):
        env_choice("LOOKALIKE_S3_ADDRESSING_STYLE", ("auto", "path", "virtual"), "auto")
