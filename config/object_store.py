"""The S3 client of this process, for the object store that the settings name (LOOKALIKE_S3_*)."""
from __future__ import annotations

import functools
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

# What a read or write of the store raises when the store refuses it or cannot be reached, besides
# the OSError of a local file: botocore's own errors (no connection, timeouts, access denied, ...).
STORE_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError, ClientError)


def object_store_bucket() -> str | None:
    """The bucket that holds the media and the index snapshots; None keeps them under DATA_DIR."""
    return settings.LOOKALIKE_S3_BUCKET or None


def object_store_client_options() -> dict[str, Any]:
    """What ``boto3.client("s3", ...)`` and django-storages' S3 backend are both given."""
    return {
        "endpoint_url": settings.LOOKALIKE_S3_ENDPOINT_URL,
        "region_name": settings.LOOKALIKE_S3_REGION,
        "aws_access_key_id": settings.LOOKALIKE_S3_ACCESS_KEY_ID,
        "aws_secret_access_key": settings.LOOKALIKE_S3_SECRET_ACCESS_KEY,
    }


def object_store_config(**overrides: Any) -> Any:
    """The botocore configuration of every client of the store: signature v4, the addressing
    style of the settings, and retries of what a busy or restarting store answers. A store that
    does not answer at all is given up on after 5 attempts of 5 s each, not botocore's 60 s: an
    upload waiting on it is refused within about half a minute."""
    from botocore.config import Config

    options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}, "connect_timeout": 5,
                               **overrides}
    return Config(signature_version="s3v4", s3={"addressing_style": settings.LOOKALIKE_S3_ADDRESSING_STYLE},
                  **options)


@functools.cache
def object_store_client() -> Any:
    """One client per process: boto3 clients are thread-safe, and making one costs milliseconds."""
    import boto3

    return boto3.client("s3", config=object_store_config(), **object_store_client_options())


@functools.cache
def snapshot_store_client() -> Any:
    """The client of the index snapshots. A search may wait for its poll of the store, so a store that
    does not answer costs it seconds, not minutes: short timeouts, one retry (see core.index)."""
    import boto3

    config = object_store_config(connect_timeout=2, read_timeout=20,
                                 retries={"total_max_attempts": 2, "mode": "standard"})
    return boto3.client("s3", config=config, **object_store_client_options())
