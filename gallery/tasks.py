"""Celery tasks of the gallery: each takes ids and calls a service (imported inside the task: the
service imports this module to send it). Running one twice is harmless."""
from celery import shared_task


@shared_task(name="gallery.make_display_copies")
def make_display_copies(*image_ids: list[int]) -> None:
    from gallery.copies import display_copies_catch_up
    from search.worker import embeddings_wait_for_this_worker

    # A message of an earlier release names the images it was sent for; the catch-up covers them.
    display_copies_catch_up(pause=embeddings_wait_for_this_worker)
