"""Writes of the search app: embedding images, and sending again the ones that need it.

``image_embed`` stores vectors and appends to the change log, in one transaction per batch;
``search.index_writer`` applies that log to the index.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from PIL.Image import Image as PILImage
from psycopg.types.json import Jsonb

from core.backbones import WeightsMissing
from core.identity import IndexIdentity
from core.imaging import DISPLAY_MAX_SIDE, DISPLAY_QUALITY, ImageRejected, display_jpeg_pixels
from core.index import IndexMismatch
from gallery import copies
from gallery.models import Image
from search import changelog, clusters, copy_notices, generations, outliers, runtime
from search.models import Embedding, IndexChange
from search.queues import (
    embed_messages_waiting,
    queue_embedding,
    queue_embeddings,
    queue_index_sync,
    queue_tag_suggestions,
)
from search.tag_suggestions import classifier_words

if TYPE_CHECKING:
    import torch

    from core.embedding import Descriptors, Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOutcome:
    indexed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def _claim_batch(*, image_id: int, token: str) -> list[Image]:
    """Take this image, and other queued ones to fill a batch, into EMBEDDING under ``token``.

    The state guard in each UPDATE lets exactly one run claim an image. A run may reclaim what
    it claimed before (the same task delivered again after its worker died), and anyone may
    take over a claim whose lease has run out. Each claim counts as an attempt. Only images never
    tried before fill a batch: one that failed, or was in a batch whose worker died, is embedded
    alone, so that one poison file cannot fail or hold up the others.
    """
    now = timezone.now()
    claim = {"state": Image.State.EMBEDDING, "claim_token": token, "claimed_at": now, "attempts": F("attempts") + 1}
    held_before = list(Image.objects.filter(claim_token=token, state=Image.State.EMBEDDING).exclude(id=image_id)
                       .values_list("id", flat=True))
    if held_before:
        # This run stopped midway before, maybe because of one of these files: each goes alone.
        Image.objects.filter(id__in=held_before, claim_token=token).update(state=Image.State.QUEUED, claim_token="",
                                                                          claimed_at=None)
        for other_id in held_before:
            queue_embedding(other_id)
    expired = now - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS)
    claimable = (Q(state=Image.State.QUEUED) | Q(state=Image.State.EMBEDDING, claim_token=token)
                 | Q(state=Image.State.EMBEDDING, claimed_at__lt=expired))
    Image.objects.filter(claimable, id=image_id).update(**claim)
    # Until the batch is full or nothing is left: an import asks once per batch, so a run that
    # lost its picks to another one at the same moment must look again.
    while (room := settings.LOOKALIKE_EMBED_BATCH_SIZE - Image.objects.filter(claim_token=token).count()) > 0:
        others = list(Image.objects.filter(state=Image.State.QUEUED, attempts=0).order_by("id")
                      .values_list("id", flat=True)[:room])
        if not others:
            break
        Image.objects.filter(id__in=others, state=Image.State.QUEUED).update(**claim)
    return list(Image.objects.filter(claim_token=token, state=Image.State.EMBEDDING).order_by("id"))


def image_embed(*, image_id: int, claim_token: str) -> EmbedOutcome:
    """Embed an image (and a batch of other queued ones), store the vectors and log the change.

    While a reindex builds an index of another backbone, the images are embedded with that one
    too, so that the new index holds them when it replaces the current one. Running it again for
    an image that is already indexed does nothing.
    """
    images = _claim_batch(image_id=image_id, token=claim_token)
    limit = settings.LOOKALIKE_EMBED_MAX_ATTEMPTS
    worn_out = {image.id: _worn_out_reason(image) for image in images if image.attempts > limit}
    images = [image for image in images if image.id not in worn_out]
    if not images:
        return _finish_batch(claim_token, {}, worn_out, permanent=set(worn_out)) if worn_out else EmbedOutcome()
    # Read once: the model that computes the vectors is the one whose label they are stored under.
    generation = generations.active()
    try:
        embedder = runtime.embedder_for(generation.backbone)
    except Exception as exc:  # missing weights, a bad setting: every image in the batch says why
        log.exception("Cannot load the embedding model")
        failed = {image.id: str(exc) for image in images}
        # Weights only appear when an operator installs them: trying again would not help.
        permanent = set(failed) if isinstance(exc, WeightsMissing) else set()
        return _finish_batch(claim_token, {}, failed | worn_out, permanent=permanent | set(worn_out))
    described, unread = images_embed_with(embedder=embedder, images=images)
    damaged = {image_id: reason for image_id, reason in unread.items() if isinstance(reason, ImageRejected)}
    _fail_damaged(token=claim_token, damaged=damaged)
    failed = {image_id: str(reason) for image_id, reason in unread.items() if image_id not in damaged}
    computed = {generation.identity: described}
    found_copies = _copies_of(generation.identity, described)
    vectors = {i: d.vector for i, d in described.items()}
    found_outliers = outliers.outliers_find(identity=generation.identity, vectors=vectors)
    found_clusters = clusters.clusters_find(identity=generation.identity, vectors=vectors)
    building = reindex_target_identity()
    if building is not None and building not in computed and described:
        try:
            # Decoded again for the second model: only while a reindex builds another backbone's index.
            computed[building], _ = images_embed_with(embedder=runtime.embedder_for(building.backbone),
                                                      images=[image for image in images if image.id in described])
        except Exception:  # the reindex embeds whatever is still missing before it completes
            log.exception("Could not embed with %s for the reindex in progress", building.describe())
    outcome = _finish_batch(claim_token, computed, failed | worn_out, permanent=set(worn_out),
                            found_copies=found_copies, found_outliers=found_outliers,
                            found_clusters=found_clusters)
    # Searchable now, with its thumbnail; the display copy needs a finer decode and comes after.
    if outcome.indexed:
        copies.queue_display_copies()
    return outcome


def _copies_of(identity: IndexIdentity, described: Described) -> copy_notices.Found:
    try:
        return copy_notices.copies_find(identity=identity, vectors={i: d.vector for i, d in described.items()})
    except Exception:  # telling an uploader about a copy must never cost them the upload
        log.exception("Could not look for copies of images %s", sorted(described))
        return {}


def _worn_out_reason(image: Image) -> str:
    last = image.error or "the worker stopped while embedding it"
    return f"Gave up after {image.attempts - 1} attempts: {last}"


def _retry_delay(attempts: int) -> float:
    """Seconds before the next attempt: the setting, multiplied by 4 after each failure."""
    return settings.LOOKALIKE_EMBED_RETRY_SECONDS * 4 ** max(0, attempts - 1)


class ImageDescriptors(NamedTuple):
    """What is stored of an image for one identity."""

    vector: np.ndarray
    local: np.ndarray  # the feature map, positions x channels
    words: list[tuple[str, float]]  # the classifier's best words, for tag suggestions before any tags


Described = dict[int, ImageDescriptors]


def images_embed_with(*, embedder: Embedder, images: list[Image]) -> tuple[Described, dict[int, str | ImageRejected]]:
    """Descriptors of images, each original decoded once (with the thumbnail of each image that
    lacks one written from the same pixels), and why each image that could not be read was not:
    an ``ImageRejected`` for a file found damaged, with the code an upload refusal gives."""
    decoded = copies.originals_decode(images, min_side=embedder.recipe.input_size,
                                      on_device=embedder if embedder.decodes_jpeg_itself else None)
    return describe_pictures(embedder=embedder, pictures=decoded.pictures), decoded.failed | decoded.damaged


def describe_pictures(*, embedder: Embedder, pictures: dict[int, PILImage | torch.Tensor]) -> Described:
    """Gallery descriptors of decoded pictures (Pillow images, or tensors decoded on a device), by image id.

    Each picture is described as a JPEG of it at the display copy's quality shows it. What people
    search with is nearly always a JPEG made again from the photo (a download, a screenshot, a
    forwarded copy), and putting the gallery's side through the same loss finds more originals
    first than describing the pixels as stored: 0.957 against 0.952 at recall@1 on seed 1 of
    ``copy_detection.py`` (docs/benchmarks.md), for one encode and decode of a picture already
    reduced to the thumbnail's scale.
    """
    on_device = {image_id: p for image_id, p in pictures.items() if not isinstance(p, PILImage)}
    by_pillow = {image_id: p for image_id, p in pictures.items() if isinstance(p, PILImage)}
    described: Described = {}
    if on_device:
        from core.embedding import encode_jpegs  # torch, which only a process that embeds loads

        encoded = encode_jpegs(list(on_device.values()), max_side=DISPLAY_MAX_SIDE, quality=DISPLAY_QUALITY)
        described |= _by_image(list(on_device), embedder.describe_decoded(embedder.decode_jpegs(encoded),
                                                                          gallery=True))
    if by_pillow:
        prepared = [embedder.prepare(display_jpeg_pixels(picture)) for picture in by_pillow.values()]
        described |= _by_image(list(by_pillow), embedder.describe_prepared(prepared, gallery=True))
    return described


@transaction.atomic
def _fail_damaged(*, token: str, damaged: dict[int, ImageRejected]) -> None:
    """Mark failed, for good, the images whose original turned out damaged only when decoded, with
    the code and reason an upload refusal gives; remove their files, and anything of them in search."""
    if not damaged:
        return
    ours = list(Image.objects.select_for_update().filter(claim_token=token, state=Image.State.EMBEDDING,
                                                         id__in=list(damaged)))
    for image in ours:
        rejection = damaged[image.pk]
        Image.objects.filter(pk=image.pk).update(
            state=Image.State.FAILED, error=rejection.message[:2000], error_code=rejection.code, claim_token="",
            claimed_at=None, retry_after=None, original="", display="", thumbnail="")
        files = [f.name for f in (image.original, image.display, image.thumbnail) if f.name]
        transaction.on_commit(functools.partial(copies.delete_files, files))
    ids = [image.pk for image in ours]
    # An image embedded before (and queued again) leaves search too.
    if Embedding.objects.filter(image_id__in=ids).delete()[0]:
        changelog.record_changes(image_ids=ids, kind=IndexChange.Kind.REMOVE)
        queue_index_sync()


def _by_image(image_ids: list[int], described: Descriptors) -> Described:
    words = [[] for _ in image_ids] if described.classes is None else classifier_words(described.classes)
    return {image_id: ImageDescriptors(vector, local, image_words) for image_id, vector, local, image_words
            in zip(image_ids, described.vectors, described.local, words, strict=True)}


def embeddings_store(*, identity: IndexIdentity, described: Described) -> None:
    """Store (or replace) descriptors of one identity. The caller logs the change if the index must follow.

    Raises ``IndexMismatch``, storing nothing, for a vector whose length is not the identity's dimension.
    """
    for image_id, d in described.items():
        if d.vector.shape != (identity.dim,):
            raise IndexMismatch(f"the vector of image #{image_id} has {d.vector.size} values, "
                                f"{identity.describe()} has {identity.dim}")
    rows = [(image_id, d.vector.astype(np.float32).tobytes(), d.local.astype(np.float16).tobytes(),
             [[word, round(score, 4)] for word, score in d.words])
            for image_id, d in described.items()]
    if not rows:
        return
    if connection.vendor == "postgresql":
        _embeddings_copy(identity=identity, rows=rows)
        return
    Embedding.objects.bulk_create(
        [Embedding(image_id=image_id, backbone=identity.backbone, backbone_version=identity.backbone_version,
                   dim=identity.dim, vector=vector, local_features=local, classifier_words=words)
         for image_id, vector, local, words in rows],
        update_conflicts=True, unique_fields=["image", "backbone", "backbone_version"],
        update_fields=["dim", "vector", "local_features", "classifier_words"],
    )


def _embeddings_copy(*, identity: IndexIdentity, rows: list[tuple[int, bytes, bytes, list[list[object]]]]) -> None:
    """``embeddings_store``'s upsert on PostgreSQL: the rows go by binary COPY into a temporary
    table, then into the table by one INSERT ... ON CONFLICT. A row is mostly its 43 kB feature
    map, which a multi-row INSERT sends as hex text: by ``bench/batch_writes.py`` this writes a
    batch of 128 about 2.5 times as fast, and a batch of 8 about 1.2 times."""
    table = Embedding._meta.db_table
    # The temporary table lives as long as the connection; its rows never outlive the transaction.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS incoming_embeddings (image_id bigint, vector bytea, "
                       "local_features bytea, classifier_words jsonb) ON COMMIT DELETE ROWS")
        with cursor.cursor.copy("COPY incoming_embeddings (image_id, vector, local_features, classifier_words) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "bytea", "bytea", "jsonb"])
            for image_id, vector, local, words in rows:
                copy.write_row((image_id, vector, local, Jsonb(words)))
        cursor.execute(
            f"INSERT INTO {table} (image_id, backbone, backbone_version, dim, vector, local_features, "
            "classifier_words, created_at) "
            "SELECT image_id, %s, %s, %s, vector, local_features, classifier_words, %s FROM incoming_embeddings "
            "ON CONFLICT (image_id, backbone, backbone_version) DO UPDATE SET dim = EXCLUDED.dim, "
            "vector = EXCLUDED.vector, local_features = EXCLUDED.local_features, "
            "classifier_words = EXCLUDED.classifier_words",
            [identity.backbone, identity.backbone_version, identity.dim, timezone.now()])
        # A second identity's rows may follow in the same transaction.
        cursor.execute("DELETE FROM incoming_embeddings")


@dataclass(frozen=True)
class IdentitiesInUse:
    active: IndexIdentity
    building: IndexIdentity | None  # what a reindex that is not asked to stop is building

    def __contains__(self, identity: IndexIdentity) -> bool:
        return identity in (self.active, self.building)


def identities_in_use() -> IdentitiesInUse:
    """The active identity and the one a reindex is building, read under the reindex job's row
    lock: call inside a transaction. A reindex switches generations, and a cancel is recorded,
    under that lock, so neither comes between this read and the caller's commit (SQLite runs one
    writing transaction at a time, which serialises them the same way)."""
    building = generations.reindex_in_progress(lock=True)
    return IdentitiesInUse(runtime.index_identity(), building.identity if building else None)


@transaction.atomic
def _finish_batch(token: str, computed: dict[IndexIdentity, Described], failed: dict[int, str], *,
                  permanent: set[int] | None = None, found_copies: copy_notices.Found | None = None,
                  found_outliers: outliers.Found | None = None, found_clusters: clusters.Found | None = None
                  ) -> EmbedOutcome:
    """Store what the batch computed, for the identities still in use at commit, and settle each
    image. An image with no vector of the identity active now goes back to the queue."""
    in_use = identities_in_use()
    now = timezone.now()
    embedded = set().union(*computed.values()) - set(failed)
    # Locked, so that a delete or another run's takeover cannot change them before this commits;
    # what is stored and logged is only what these rows say is still this run's.
    owned = dict(Image.objects.select_for_update().filter(claim_token=token, state=Image.State.EMBEDDING,
                                                          id__in=embedded | set(failed))
                 .values_list("id", "attempts"))
    active = computed.get(in_use.active, {})
    indexed = sorted(image_id for image_id in embedded if image_id in owned and image_id in active)
    outliers.outliers_record(found=found_outliers or {}, image_ids=indexed)
    Image.objects.filter(id__in=indexed).update(state=Image.State.INDEXED, indexed_at=now, error="", claim_token="",
                                                claimed_at=None)
    if outdated := sorted(image_id for image_id in embedded if image_id in owned and image_id not in active):
        # Embedded with a model that the reindex replaced meanwhile: not a failure of the image.
        log.info("Embedding %d images again: %s replaced their model while they were embedded",
                 len(outdated), in_use.active.describe())
        Image.objects.filter(id__in=outdated).update(state=Image.State.QUEUED, claim_token="", claimed_at=None,
                                                     attempts=F("attempts") - 1, retry_after=None)
        for image_id in outdated:
            queue_embedding(image_id)
    for image_id, reason in failed.items():
        if image_id not in owned:
            continue
        mine = Image.objects.filter(id=image_id)
        if image_id in (permanent or ()) or owned[image_id] >= settings.LOOKALIKE_EMBED_MAX_ATTEMPTS:
            mine.update(state=Image.State.FAILED, error=reason[:2000], claim_token="", claimed_at=None,
                        retry_after=None)
        else:
            delay = _retry_delay(owned[image_id])
            mine.update(state=Image.State.QUEUED, error=reason[:2000], claim_token="", claimed_at=None,
                        retry_after=now + timedelta(seconds=delay))
            queue_embedding(image_id, countdown=delay)
    stale = Embedding.objects.filter(image_id__in=indexed).other_than(in_use.active)
    if in_use.building is not None:
        stale = stale.exclude(backbone=in_use.building.backbone, backbone_version=in_use.building.backbone_version)
    stale.delete()
    for identity, described in computed.items():
        if identity not in in_use:
            log.info("Dropping %d vectors of %s: no index uses them now", len(described), identity.describe())
            continue
        embeddings_store(identity=identity, described={i: described[i] for i in indexed if i in described})
    copy_notices.copies_record(found=found_copies or {}, image_ids=indexed)
    # Last but the log: it holds a lock on the clustering in service until commit.
    clusters.clusters_record(found=found_clusters, identity=in_use.active, image_ids=indexed)
    changelog.record_changes(image_ids=indexed, kind=IndexChange.Kind.UPSERT)
    if indexed:
        queue_index_sync()
        queue_tag_suggestions(indexed)
    return EmbedOutcome(indexed=indexed, failed={i: reason for i, reason in failed.items() if i in owned})


def reindex_target_identity() -> IndexIdentity | None:
    """The identity of the index a reindex in progress is building, if any."""
    building = generations.reindex_in_progress()
    return building.identity if building else None


def embeddings_purge_stray() -> int:
    """Delete vectors of models that neither the index in service, the one it replaced, nor a
    reindex in progress use: left behind when a reindex stopped while an upload was embedded
    for it."""
    kinds = set(Embedding.objects.other_than(runtime.index_identity()).values_list("backbone", "backbone_version")
                .distinct())
    stray = [kind for kind in kinds if not generations.vectors_expected(kind)]
    return sum(Embedding.objects.filter(backbone=b, backbone_version=v).delete()[0] for b, v in stray)


def images_requeue_stuck(*, older_than: timedelta) -> int:
    """Send again the images whose message was lost and those whose embedding claim outlived its
    lease (their worker died).

    A queued image is taken as lost once it has waited longer than ``older_than`` and no message
    waits on the embedding queue any more: while one does, a worker will still come to it (a run
    fills its batch with the oldest images never tried), and sending each waiting image of a long
    import again would only pile up messages. An image is sent at most once per ``older_than``;
    those never tried go out one message per batch, as an import sends them.
    """
    now = timezone.now()
    cutoff = now - older_than
    lease_ended = now - timedelta(seconds=settings.LOOKALIKE_EMBED_LEASE_SECONDS)
    stuck = Q(state=Image.State.EMBEDDING, claimed_at__lt=lease_ended)
    if embed_messages_waiting() == 0:
        stuck |= (Q(state=Image.State.QUEUED, retry_after__isnull=True, created_at__lt=cutoff)
                  | Q(state=Image.State.QUEUED, retry_after__lt=cutoff))
    with transaction.atomic():
        images = list(Image.objects.filter(stuck).order_by("id").values_list("id", "state", "attempts"))
        Image.objects.filter(id__in=[image_id for image_id, *_ in images], state=Image.State.QUEUED).update(
            retry_after=now)
        never_tried = [image_id for image_id, state, attempts in images
                       if state == Image.State.QUEUED and attempts == 0]
        queue_embeddings(never_tried)
        for image_id in {image_id for image_id, *_ in images}.difference(never_tried):
            queue_embedding(image_id)
    return len(images)


def images_requeue_unembedded() -> int:
    """Queue again the indexed images that have no vector of the identity in use (a batch that
    committed across a switch of generations left them so): search cannot find them."""
    with transaction.atomic():
        identity = identities_in_use().active
        ids = list(Image.objects.filter(state=Image.State.INDEXED)
                   .exclude(id__in=Embedding.objects.of(identity).values("image_id")).values_list("id", flat=True))
        Image.objects.filter(id__in=ids, state=Image.State.INDEXED).update(
            state=Image.State.QUEUED, error="", attempts=0, retry_after=None)
        for image_id in ids:
            queue_embedding(image_id)
    if ids:
        log.warning("Queued %d indexed images again: they had no vector of %s", len(ids), identity.describe())
    return len(ids)


def images_retry_failed(*, image_ids: Collection[int]) -> int:
    """Queue failed images to be embedded again, with a fresh count of attempts."""
    with transaction.atomic():
        ids = list(Image.objects.filter(id__in=list(image_ids), state=Image.State.FAILED).values_list("id", flat=True))
        Image.objects.filter(id__in=ids, state=Image.State.FAILED).update(
            state=Image.State.QUEUED, error="", attempts=0, retry_after=None)
        for image_id in ids:
            queue_embedding(image_id)
    return len(ids)
