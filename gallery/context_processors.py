from django.conf import settings
from django.http import HttpRequest

from gallery.uploads import file_too_large_message, upload_too_large_detail


def site(request: HttpRequest) -> dict[str, object]:
    return {
        "public_gallery": settings.LOOKALIKE_PUBLIC_GALLERY,
        "max_upload_files": settings.LOOKALIKE_MAX_UPLOAD_FILES,
        # For the pages' script, which refuses a file over the limit before sending it, in the server's words.
        "max_upload_bytes": settings.LOOKALIKE_MAX_UPLOAD_BYTES,
        "file_too_large_message": file_too_large_message(settings.LOOKALIKE_MAX_UPLOAD_BYTES),
        "upload_too_large_detail": upload_too_large_detail(),
    }
