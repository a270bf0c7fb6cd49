"""The uploads and their copies in the object store: django-storages' S3 backend on LOOKALIKE_S3_BUCKET.

Nothing in the bucket is public: objects are written without an ACL (the bucket's owner only), so
every read goes through the site, which checks who may see the image (``gallery.views.media`` and
``gallery.views.original``). Addresses of media are therefore the site's own, as with files on disk.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.utils.encoding import filepath_to_uri
from storages.backends.s3 import S3Storage

from config.object_store import object_store_config


class MediaStorage(S3Storage):
    """Made again whenever STORAGES changes; it reads the LOOKALIKE_S3_* settings as it is made."""

    def get_default_settings(self) -> dict[str, Any]:
        return {
            **super().get_default_settings(),
            "bucket_name": settings.LOOKALIKE_S3_BUCKET,
            "endpoint_url": settings.LOOKALIKE_S3_ENDPOINT_URL,
            "region_name": settings.LOOKALIKE_S3_REGION,
            "access_key": settings.LOOKALIKE_S3_ACCESS_KEY_ID,
            "secret_key": settings.LOOKALIKE_S3_SECRET_ACCESS_KEY,
            "addressing_style": settings.LOOKALIKE_S3_ADDRESSING_STYLE,
            "signature_version": "s3v4",
            "client_config": object_store_config(),
            # Private objects: no ACL is sent, so only the bucket's owner may read them, and any
            # address that the backend makes is signed.
            "default_acl": None,
            "querystring_auth": True,
            # A served copy is named after its original and written again under that name when a
            # worker repeats a batch (gallery.copies); originals have names never used before.
            "file_overwrite": True,
            # A file read from the store (an original, for a worker) is kept in memory up to the
            # size of an upload kept in memory, and in a temporary file beyond it.
            "max_memory_size": settings.FILE_UPLOAD_MAX_MEMORY_SIZE,
        }

    def url(self, name: str | None, parameters: Any = None, expire: Any = None, http_method: Any = None) -> str:
        """The site's address of a file, as for files on disk: the site serves media itself."""
        return urljoin(settings.MEDIA_URL, filepath_to_uri(name or ""))
