"""Celery tasks of the gallery: each takes ids and calls a service. Running one twice is harmless."""
from celery import shared_task

from gallery import copies


@shared_task(name="gallery.make_display_copies")
def make_display_copies(image_ids: list[int]) -> None:
    copies.images_make_display_copies(image_ids=image_ids)
