"""The size limits of an upload: stopping an oversized one while it streams in, before it is
spooled to disk in full, reading one whole up to its limit, and what a refusal says."""
from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from core.imaging import ImageRejected


class Readable(Protocol):
    """An uploaded file, or anything else whose contents can be read."""

    def read(self, size: int, /) -> bytes: ...


class FileSizeLimit(FileUploadHandler):
    """Ends the parsing of a request as soon as one of its files passes ``limit`` bytes.

    Placed before Django's own handlers, so the partial file they were writing is closed (and
    its temporary file deleted) by the parser; ``too_large`` then names the file.
    """

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.too_large: str | None = None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self.too_large = self.file_name or "a file"
            # Read the rest of the body, so that the client gets the answer instead of a reset.
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def file_too_large_message(limit: int) -> str:
    """The refusal of one file over ``limit`` bytes; the pages' script says the same before sending it."""
    return f"The file is larger than the limit of {filesizeformat(limit)}."


def upload_too_large_detail() -> str:
    """What follows the name of a file that makes a whole upload too large, on the server and in the page."""
    per_file = filesizeformat(settings.LOOKALIKE_MAX_UPLOAD_BYTES)
    return f"nothing from this upload was stored. Each file may be at most {per_file}."


def read_limited(source: Readable, limit: int) -> bytes:
    """Read a whole upload, refusing it as soon as it is over ``limit`` bytes."""
    data = source.read(limit + 1)
    if len(data) > limit:
        raise ImageRejected("too_large", file_too_large_message(limit))
    return data
