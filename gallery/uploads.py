"""Stopping an oversized upload while it streams in, before it is spooled to disk in full."""
from __future__ import annotations

from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest


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
