"""Celery tasks: each takes an id (or nothing) and calls a service. Running one twice is harmless.
Each imports its service inside its body: the services import this module to send them."""
from celery import shared_task


@shared_task(bind=True, name="search.embed_image")
def embed_image(self, image_id: int) -> None:
    from search.services import image_embed

    # The task id is the claim token: if this worker dies and the same task is delivered
    # again, it may take back the batch it had claimed.
    image_embed(image_id=image_id, claim_token=self.request.id or f"direct-{image_id}")


@shared_task(name="search.send_embedding_batches")
def send_embedding_batches(first_ids: list[int]) -> None:
    from search.queues import embedding_batches_send

    embedding_batches_send(first_ids=first_ids)


@shared_task(name="search.sync_index")
def sync_index(verify: bool = False, deferred: bool = False) -> None:
    from search.index_writer import index_sync

    result = index_sync(verify=verify, deferred=deferred)
    if result.status == "deferred":
        sync_index.apply_async(kwargs={"verify": verify, "deferred": True}, countdown=result.retry_in)


@shared_task(name="search.suggest_tags")
def suggest_tags(image_ids: list[int]) -> None:
    from search.tag_suggestions import tag_suggestions_make

    tag_suggestions_make(image_ids=image_ids)


@shared_task(name="search.cluster_gallery")
def cluster_gallery() -> None:
    from search.clusters import clusters_start

    clusters_start()


@shared_task(name="search.upkeep")
def upkeep() -> None:
    from search.upkeep import upkeep_now

    upkeep_now()
