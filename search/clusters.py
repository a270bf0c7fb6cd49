"""Browse by look: the gallery grouped into clusters of alike images (``core.kmeans``), for the
"Browse" page.

A background job (admin, "Group by look"; and Celery beat every ``LOOKALIKE_CLUSTER_INTERVAL``)
reads the stored vectors of the index in service from the database a batch at a time, in id order,
clusters them by mini-batch k-means, then assigns every image to its nearest centroid and stores
the result as a new ``Clustering``, which replaces the previous one whole once it is complete. A
new upload joins the nearest cluster of the clustering in service in the transaction that marks it
indexed (one matrix product for its batch), so it is on the Browse page as soon as it is searchable.

Everyone sees the clusters through ``gallery.selectors.image_list_visible``: the counts, the
representative thumbnails (the most typical images the viewer may see) and a cluster's pages hold
only the indexed images the viewer may see, and a cluster with none of them is not shown at all.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection, transaction
from django.db.models import Count, F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from core import kmeans
from core.identity import IndexIdentity
from gallery import selectors as gallery_selectors
from gallery.models import Cluster, Clustering, ClusterMember, Image
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun
from search import changelog, runtime
from search.models import Embedding

log = logging.getLogger(__name__)

# Vectors read from the database at once: with the sample and the centroids, all the job holds.
BATCH = 2000
# The most typical images shown on a cluster's card.
REPRESENTATIVES = 4
SEED = 0


# The clustering in service ----------------------------------------------------------------


def clustering_current() -> Clustering | None:
    """The clustering shown: the one completed last."""
    return Clustering.objects.filter(completed_at__isnull=False).order_by("-completed_at", "-id").first()


@lru_cache(maxsize=2)
def _centroids(clustering_id: int, completed_at: datetime | None) -> tuple[np.ndarray, kmeans.Clustering] | None:
    """Cluster ids and centroids of a clustering, which never change once it is complete (by id and
    completion time: SQLite may give a deleted row's id again)."""
    rows = list(Cluster.objects.filter(clustering_id=clustering_id).order_by("id").values_list("id", "centroid"))
    mean = Clustering.objects.filter(pk=clustering_id).values_list("mean", flat=True).first()
    if not rows or not mean:
        return None
    centroids = np.stack([np.frombuffer(bytes(c), dtype=np.float32) for _, c in rows])
    return (np.array([i for i, _ in rows], dtype=np.int64),
            kmeans.Clustering(centroids=centroids, mean=np.frombuffer(bytes(mean), dtype=np.float32),
                              counts=np.zeros(len(rows), dtype=np.int64)))


@dataclass(frozen=True)
class Found:
    """Where freshly embedded images go in a clustering: per image id, (cluster id, similarity)."""

    clustering_id: int
    identity: IndexIdentity
    places: dict[int, tuple[int, float]]


def clusters_find(*, identity: IndexIdentity, vectors: dict[int, np.ndarray]) -> Found | None:
    """The nearest cluster of each of these freshly embedded images in the clustering in service, if its
    vectors are of ``identity`` (one matrix product). Outside the transaction that indexes them, as the
    copies and outlier lookups are, so that it holds no lock meanwhile; never fails the batch."""
    try:
        current = clustering_current()
        if (current is None or not vectors
                or (current.backbone, current.backbone_version) != (identity.backbone, identity.backbone_version)):
            return None
        stored = _centroids(current.pk, current.completed_at)
        ids = [i for i, vector in vectors.items() if stored is not None and vector.shape == stored[1].mean.shape]
        if stored is None or not ids:
            return None
        labels, similarities = stored[1].assign(np.stack([vectors[i] for i in ids]))
        return Found(current.pk, identity, {i: (int(stored[0][label]), float(similarity))
                                            for i, label, similarity in zip(ids, labels, similarities, strict=True)})
    except Exception:  # browsing must never cost anyone their upload; the next job groups them
        log.exception("Could not find the clusters of images %s", sorted(vectors))
        return None


def clusters_record(*, found: Found | None, identity: IndexIdentity, image_ids: list[int]) -> int:
    """Put these images, indexed now with vectors of ``identity``, into the clusters found for them;
    returns how many joined one. Call in the transaction that indexes them, as late as may be: it holds
    a lock on the clustering until commit. Does nothing when the clustering was replaced since (the next
    job groups them) and never fails that transaction."""
    ids = [i for i in image_ids if found is not None and i in found.places]
    if found is None or not ids or found.identity != identity:
        return 0
    try:
        with transaction.atomic():
            if not _lock_in_service(found.clustering_id):
                return 0
            ClusterMember.objects.bulk_create(
                [ClusterMember(clustering_id=found.clustering_id, cluster_id=found.places[i][0], image_id=i,
                               similarity=found.places[i][1]) for i in ids],
                update_conflicts=True, unique_fields=["clustering", "image"], update_fields=["cluster", "similarity"])
        return len(ids)
    except Exception:  # browsing must never cost anyone their upload; the next job groups them
        log.exception("Could not put images %s into clusters", ids)
        return 0


def _lock_in_service(clustering_id: int) -> bool:
    """Whether the clustering is still the one in service, share-locked until commit if so: a job that
    replaces it (and locks it first, ``_put_in_service``) waits for this transaction, or has replaced it
    already. Embedding batches do not wait for each other. SQLite runs one writer at a time anyway."""
    current = clustering_current()
    if current is None or current.pk != clustering_id:
        return False
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {Clustering._meta.db_table} WHERE id = %s FOR KEY SHARE", [clustering_id])
        return cursor.fetchone() is not None


def _members_store(clustering: Clustering, image_ids: list[int], cluster_ids: np.ndarray,
                   similarities: np.ndarray) -> None:
    ClusterMember.objects.bulk_create(
        [ClusterMember(clustering=clustering, cluster_id=int(c), image_id=i, similarity=float(s))
         for i, c, s in zip(image_ids, cluster_ids, similarities, strict=True)],
        update_conflicts=True, unique_fields=["clustering", "image"], update_fields=["cluster", "similarity"])


# The background job ---------------------------------------------------------------------------


def clusters_start(*, started_by: User | AnonymousUser | None = None) -> Job:
    """Start a clustering job, or return the one queued or running: two at once would replace each
    other's half-made clustering."""
    active = Job.objects.filter(kind=Job.Kind.CLUSTERS, state__in=Job.ACTIVE_STATES).first()
    return active or job_services.job_start(kind=Job.Kind.CLUSTERS, started_by=started_by)


def _indexed(identity: IndexIdentity) -> QuerySet[Embedding]:
    return Embedding.objects.of(identity).filter(image__state=Image.State.INDEXED)


def _chunks(identity: IndexIdentity, run: JobRun | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
    """The indexed images' vectors in id order, ``BATCH`` at a time (keyset pages: no cursor stays open
    while the job writes), reporting each page to the run."""
    after = 0
    while True:
        page = list(_indexed(identity).filter(image_id__gt=after).order_by("image_id")
                    .values_list("image_id", "vector")[:BATCH])
        if not page:
            return
        after = page[-1][0]
        vectors = changelog.decode_vectors(identity, page)
        if vectors:
            yield list(vectors), np.stack(list(vectors.values()))
        if run is not None:
            run.step(done=run.job.done + len(page))


def clusters_run(run: JobRun) -> str:
    """The runner of clustering jobs: k-means over the indexed images' vectors, every image assigned to
    its nearest centroid, and the result put in service; returns the summary. A resumed run starts over."""
    identity = runtime.index_identity()
    Clustering.objects.filter(job=run.job, completed_at__isnull=True).delete()
    n = _indexed(identity).count()
    if n == 0:
        return "Nothing to group: no image is indexed yet."
    k = min(settings.LOOKALIKE_CLUSTER_COUNT or kmeans.cluster_count(n), n)
    run.step(total=n * (kmeans.EPOCHS + 2), done=0, phase="clustering")
    fitted = kmeans.fit(lambda: (vectors for _, vectors in _chunks(identity, run)), k, seed=SEED)
    run.step(phase="assigning")
    clustering = Clustering.objects.create(job=run.job, backbone=identity.backbone,
                                           backbone_version=identity.backbone_version,
                                           mean=fitted.mean.astype(np.float32).tobytes())
    clusters = Cluster.objects.bulk_create(
        [Cluster(clustering=clustering, number=j + 1, centroid=c.astype(np.float32).tobytes())
         for j, c in enumerate(fitted.centroids)])
    cluster_ids = np.array([c.pk for c in clusters], dtype=np.int64)
    for ids, vectors in _chunks(identity, run):
        labels, similarities = fitted.assign(vectors)
        _members_store(clustering, ids, cluster_ids[labels], similarities)
    shown = _put_in_service(clustering, identity, fitted, cluster_ids)
    if connection.vendor == "postgresql":
        # Every row is new: until autovacuum counts them, the planner takes the table for nearly empty,
        # and a group's page read all the gallery's images through it (12 s at 100,000, bench/clusters.py).
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {ClusterMember._meta.db_table}")
    return f"Grouped {n} images into {shown} clusters."


@transaction.atomic
def _put_in_service(clustering: Clustering, identity: IndexIdentity, fitted: kmeans.Clustering,
                    cluster_ids: np.ndarray) -> int:
    """Assign what was indexed since the pass, number the clusters by size (empty ones left out),
    replace the clustering in service with this one; returns the clusters kept."""
    # Locked before anything else, as an embedding batch locks the one in service (clusters_record).
    replaced = list(Clustering.objects.select_for_update().exclude(pk=clustering.pk)
                    .filter(created_at__lte=clustering.created_at).values_list("pk", flat=True))
    missing = list(_indexed(identity).exclude(image_id__in=ClusterMember.objects.filter(clustering=clustering)
                                               .values("image_id")).values_list("image_id", flat=True))
    for start in range(0, len(missing), BATCH):
        vectors = changelog.vectors_for(identity, missing[start:start + BATCH])
        if vectors:
            labels, similarities = fitted.assign(np.stack(list(vectors.values())))
            _members_store(clustering, list(vectors), cluster_ids[labels], similarities)
    sizes = dict(ClusterMember.objects.filter(clustering=clustering).values("cluster")
                 .annotate(n=Count("pk")).values_list("cluster", "n"))
    Cluster.objects.filter(clustering=clustering).exclude(pk__in=list(sizes)).delete()
    kept = sorted(sizes, key=lambda c: (-sizes[c], c))
    # Numbers stay unique throughout: first out of the way, then 1 for the largest.
    Cluster.objects.filter(clustering=clustering).update(number=F("number") + len(cluster_ids))
    Cluster.objects.bulk_update([Cluster(pk=c, number=rank + 1, size=sizes[c]) for rank, c in enumerate(kept)],
                                ["number", "size"], batch_size=500)
    ClusterMember.objects.filter(clustering_id__in=replaced).delete()
    Clustering.objects.filter(pk__in=replaced).delete()
    Clustering.objects.filter(pk=clustering.pk).update(completed_at=timezone.now())
    return len(kept)


# Reads for the Browse page ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterCard:
    cluster: Cluster
    count: int  # images in it that the viewer may see
    representatives: list[Image]


def _visible_members(*, user: User | AnonymousUser, clustering: Clustering) -> QuerySet[ClusterMember]:
    visible = gallery_selectors.image_list_visible(user=user).filter(state=Image.State.INDEXED)
    return ClusterMember.objects.filter(clustering=clustering, image__in=visible.values("pk"))


def cluster_counts_visible(*, user: User | AnonymousUser, clustering: Clustering) -> dict[int, int]:
    """Per cluster id: how many of its images ``user`` may see; a cluster with none is left out."""
    return dict(_visible_members(user=user, clustering=clustering).values("cluster")
                .annotate(n=Count("pk")).values_list("cluster", "n"))


def cluster_cards(*, user: User | AnonymousUser, clusters: list[Cluster],
                  counts: dict[int, int]) -> list[ClusterCard]:
    """The cards of these clusters: each with its count and its most typical images that ``user`` may see."""
    if not clusters:
        return []
    ranked = (_visible_members(user=user, clustering=clusters[0].clustering)
              .filter(cluster__in=[c.pk for c in clusters])
              .annotate(rank=Window(RowNumber(), partition_by=[F("cluster")],
                                    order_by=[F("similarity").desc(), F("image_id").asc()]))
              .filter(rank__lte=REPRESENTATIVES).select_related("image").order_by("cluster", "rank"))
    shown: dict[int, list[Image]] = {}
    for member in ranked:
        shown.setdefault(member.cluster_id, []).append(member.image)
    return [ClusterCard(c, counts.get(c.pk, 0), shown.get(c.pk, [])) for c in clusters]


def cluster_images_visible(*, user: User | AnonymousUser, cluster: Cluster) -> QuerySet[Image]:
    """The images of a cluster that ``user`` may see, the most typical first."""
    return (gallery_selectors.image_list_visible(user=user).filter(state=Image.State.INDEXED)
            .filter(cluster_memberships__cluster=cluster)
            .order_by("-cluster_memberships__similarity", "pk"))
