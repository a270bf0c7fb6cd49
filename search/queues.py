"""What the search app asks its workers to do: each message is sent once the transaction that
asks commits (at once outside one), so that no worker looks for rows it cannot see yet."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError

from search.tasks import embed_image, send_embedding_batches, suggest_tags, sync_index


def queue_index_sync(*, verify: bool = False) -> None:
    """Ask the index writer to run once the current transaction commits (at once outside one).

    ``verify`` makes it check the published snapshot's files too, for a reader that found them damaged.
    """
    # robust: a broker that is down must not undo or fail the write that asked; the next
    # change asks again, and readers cover the rows meanwhile.
    transaction.on_commit(lambda: sync_index.delay(verify=verify), robust=True)


def queue_embedding(image_id: int, *, countdown: float = 0.0) -> None:
    """Ask a worker to embed the image once the current transaction commits (after ``countdown`` s)."""
    # robust: a broker that is down must not fail an upload that is already stored; the image
    # stays queued and upkeep sends it again.
    transaction.on_commit(lambda: embed_image.apply_async((image_id,), countdown=countdown or None), robust=True)


def queue_embeddings(image_ids: list[int]) -> None:
    """Ask the workers to embed images just queued, never tried, once the transaction commits.

    A worker's run fills its batch from the queued images, so one message per
    ``LOOKALIKE_EMBED_BATCH_SIZE`` images is enough; one per image would mostly find its image
    already taken. The messages of a store batch larger than that go out as one, which a worker
    turns into them (``embedding_batches_send``): publishing one costs the storing process about
    as much as storing a small file, and costs nothing worth counting beside a batch's forward pass.
    """
    first_ids = image_ids[::settings.LOOKALIKE_EMBED_BATCH_SIZE]
    if len(first_ids) == 1:
        queue_embedding(first_ids[0])
    elif first_ids:
        # robust, as in queue_embedding: upkeep sends the images again if the broker is down.
        transaction.on_commit(lambda: send_embedding_batches.apply_async((first_ids,)), robust=True)


def embed_messages_waiting() -> int | None:
    """How many messages wait on the embedding queue for a worker to take them, or None when the
    broker cannot be reached."""
    with embed_image.app.connection_for_read() as broker:
        try:
            broker.ensure_connection(max_retries=1)
            channel = broker.default_channel
        except OperationalError:
            return None
        try:
            return int(channel.queue_declare(queue=settings.LOOKALIKE_EMBED_QUEUE, passive=True).message_count)
        except broker.channel_errors:
            # Redis keeps no empty list: a queue that was emptied is not found.
            return 0


def embedding_batches_send(*, first_ids: list[int]) -> None:
    """One message for each embedding batch of a store batch, named by the first image of each."""
    with embed_image.app.producer_or_acquire() as producer:
        for image_id in first_ids:
            embed_image.apply_async((image_id,), producer=producer)


def queue_tag_suggestions(image_ids: list[int]) -> None:
    """Ask a worker to suggest tags for freshly embedded images once the transaction commits."""
    if image_ids:
        # robust: a broker that is down must not undo the embedding; the job makes them later.
        transaction.on_commit(lambda: suggest_tags.delay(image_ids), robust=True)
