from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, object]:
    return {
        "public_gallery": settings.LOOKALIKE_PUBLIC_GALLERY,
        "max_upload_files": settings.LOOKALIKE_MAX_UPLOAD_FILES,
        "max_upload_mb": settings.LOOKALIKE_MAX_UPLOAD_BYTES // 2**20,
    }
