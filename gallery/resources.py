"""How an image is described in JSON, alike to the pages' scripts and to the API."""
from __future__ import annotations

from django.urls import reverse

from gallery.models import Image


def image_summary(image: Image) -> dict[str, object]:
    """Its name, where it stands in the pipeline (and why it failed), and where to see it."""
    return {
        "id": image.pk,
        "original_name": image.original_name,
        "state": image.state,
        "error": image.error,
        "error_code": image.error_code,
        "url": reverse("gallery:detail", args=[image.pk]),
        "thumbnail_url": image.thumbnail_url,
    }
