"""Celery tasks of the gallery: each takes ids and calls a service. Running one twice is harmless."""
from celery import shared_task

from gallery import copies
from search.services import embeddings_wait_for_this_worker


@shared_task(name="gallery.make_display_copies")
def make_display_copies(*image_ids: list[int]) -> None:
    # A message of an earlier release names the images it was sent for; the catch-up covers them.
    copies.display_copies_catch_up(pause=embeddings_wait_for_this_worker)
