"""Unusual uploads: each image's outlier score (``core.knn_outliers``), shown to staff in the admin.

A new image is scored in the embedding worker, with the vectors it has just made, against the
indexed images and the distances the gallery's scores were made from (one index query and two
counts per image; the upload request does nothing more), and the score is stored in the transaction
that marks it indexed. With ``LOOKALIKE_MODERATION_OUTLIER_SCORE`` set, an upload scored at or above
it is held for moderation in that same transaction, so it is never shown before staff approve it.

Every new image changes its neighbours' neighbourhoods, so a background job (admin, "Score
outliers") measures every indexed image's distance again, in batches through the index reader,
then ranks them all. Until it has run once there are no distances to rank a new image among, and
new images are not scored.
"""
from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from core.identity import IndexIdentity
from core.knn_outliers import BATCH, kth_distances, percentile_scores, share_below
from gallery.models import Image, OutlierScore
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun
from search import changelog, runtime
from search.copy_notices import indexed_apart_from

log = logging.getLogger(__name__)

# image id -> distance to its K-th nearest indexed image, for freshly embedded images
Found = dict[int, float]

_RANK_BATCH = 2000


def outliers_find(*, identity: IndexIdentity, vectors: dict[int, np.ndarray]) -> Found:
    """The distances of these freshly embedded images to the indexed images (none of them)."""
    try:
        reader = runtime.index_reader()
        if not vectors or reader.identity != identity or not OutlierScore.objects.exists():
            return {}
        ids = list(vectors)
        return kth_distances(reader, ids, np.stack([vectors[i] for i in ids]), visible=indexed_apart_from(set(ids)))
    except Exception:  # a score for staff must never cost anyone their upload
        log.exception("Could not score images %s as outliers", sorted(vectors))
        return {}


def outliers_record(*, found: Found, image_ids: list[int]) -> list[int]:
    """Store the scores of these images and hold, for moderation, the new uploads among them scored at
    or above ``LOOKALIKE_MODERATION_OUTLIER_SCORE``; returns the ids held.

    Call in the transaction that indexes them, before it marks them indexed: an image indexed before
    (embedded again, or approved) is never held again.
    """
    scored = [i for i in image_ids if i in found]
    reference = OutlierScore.objects.exclude(image_id__in=scored)
    others = reference.count()
    if not scored or not others:
        return []
    now = timezone.now()
    rows = [OutlierScore(image_id=i, distance=found[i], computed_at=now,
                         score=float(share_below(reference.filter(distance__lt=found[i]).count(), others)))
            for i in scored]
    OutlierScore.objects.bulk_create(rows, update_conflicts=True, unique_fields=["image"],
                                     update_fields=["distance", "score", "computed_at"])
    threshold = settings.LOOKALIKE_MODERATION_OUTLIER_SCORE
    if threshold is None:
        return []
    unusual = [row.image_id for row in rows if row.score is not None and row.score >= threshold]
    held = list(Image.objects.filter(pk__in=unusual, indexed_at__isnull=True).values_list("pk", flat=True))
    Image.objects.filter(pk__in=held).update(hidden=True, awaiting_approval=True)
    if held:
        log.info("Holding unusual uploads %s for moderation", held)
    return held


# The background job over the whole gallery --------------------------------------------------


def outlier_scores_start(*, started_by: User | AnonymousUser | None = None) -> Job:
    return job_services.job_start(kind=Job.Kind.OUTLIER_SCORES, started_by=started_by)


def outlier_scores_run(run: JobRun) -> str:
    """The runner of outlier score jobs: every indexed image's distance measured again, in batches
    (resuming after the checkpoint), then all of them ranked; returns the summary."""
    reader = runtime.index_reader()
    indexed = list(Image.objects.filter(state=Image.State.INDEXED).order_by("id").values_list("id", flat=True))
    visible = set(indexed)
    after = int(run.job.checkpoint.get("after", 0))
    todo = [i for i in indexed if i > after]
    run.step(total=len(indexed), done=len(indexed) - len(todo), phase="measuring")
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        vectors = changelog.vectors_for(reader.identity, batch)
        ids = [i for i in batch if i in vectors]
        found = kth_distances(reader, ids, np.stack([vectors[i] for i in ids]), visible=lambda c: c & visible) \
            if ids else {}
        now = timezone.now()
        OutlierScore.objects.bulk_create(
            [OutlierScore(image_id=i, distance=d, computed_at=now) for i, d in found.items()],
            update_conflicts=True, unique_fields=["image"], update_fields=["distance", "computed_at"])
        run.step(done=len(indexed) - len(todo) + start + len(batch), checkpoint={"after": batch[-1]})
    run.step(phase="ranking")
    return _rank_all()


def _rank_all() -> str:
    """Score every measured image by its distance's percentile among all of them."""
    # An image that left the index (failed, or embedded again) is no longer part of the gallery.
    OutlierScore.objects.exclude(image__state=Image.State.INDEXED).delete()
    rows = list(OutlierScore.objects.order_by("image_id").values_list("image_id", "distance"))
    if len(rows) < 2:
        OutlierScore.objects.all().delete()
        return "Nothing to score: the gallery needs at least two indexed images."
    ids = np.fromiter((i for i, _ in rows), dtype=np.int64, count=len(rows))
    scores = percentile_scores(np.fromiter((d for _, d in rows), dtype=np.float64, count=len(rows)))
    del rows
    now = timezone.now()
    for start in range(0, len(ids), _RANK_BATCH):
        OutlierScore.objects.bulk_update(
            [OutlierScore(image_id=int(i), score=float(s), computed_at=now)
             for i, s in zip(ids[start:start + _RANK_BATCH], scores[start:start + _RANK_BATCH], strict=True)],
            ["score", "computed_at"])
    top = int((scores >= 99.0).sum())
    return f"Scored {len(ids)} images; {top} are more unusual than 99 % of the gallery."
