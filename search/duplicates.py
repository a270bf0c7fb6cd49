"""Near-duplicate scan: group the images whose vectors are alike above a threshold.

It runs as a background job over the published index (never an all-pairs loop): each image's
vector is searched in the HNSW index for its nearest neighbours, pairs above the threshold are
joined into groups (union-find), and the groups are stored for review in the admin. On a
gallery of n images that is n index queries, in batches that report progress.
"""
from __future__ import annotations

import numpy as np
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from core.index import SnapshotCorrupt
from gallery.models import DuplicateGroup, Image
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun
from search import changelog, runtime

# Neighbours looked at per image: a group larger than this is still joined through its members.
NEIGHBOURS = 16
EXACT_SIMILARITY = 0.9999
_BATCH = 512


class ScanRefused(ValueError):
    """A duplicate scan cannot start as asked; the message says why."""


def duplicate_scan_start(*, threshold: float, started_by: User | AnonymousUser | None = None) -> Job:
    if not 0.5 <= threshold <= 1.0:
        raise ScanRefused(f"The similarity threshold must be between 0.5 and 1, not {threshold}.")
    return job_services.job_start(kind=Job.Kind.DUPLICATE_SCAN, params={"threshold": threshold},
                                  started_by=started_by)


class _Groups:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        while item != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def members(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for item in self.parent:
            groups.setdefault(self.find(item), []).append(item)
        return [sorted(group) for group in groups.values() if len(group) > 1]


def duplicate_scan_run(run: JobRun) -> str:
    """The runner of duplicate scans; returns the summary."""
    threshold = float(run.job.params["threshold"])
    store, identity = runtime.snapshot_store(), runtime.index_identity()
    meta = store.read_meta()
    if meta is None or meta.identity != identity:
        raise SnapshotCorrupt("there is no published index to scan yet; try again once images are indexed")
    index = store.load(meta, runtime.index_params())
    ids = sorted(index.ids())
    run.step(total=len(ids), done=0, phase="searching neighbours")
    groups = _Groups()
    similarity: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), _BATCH):
        batch = ids[start:start + _BATCH]
        vectors = changelog.vectors_for(identity, batch)
        present = [i for i in batch if i in vectors]
        if present:
            labels, scores = index.search(np.stack([vectors[i] for i in present]), NEIGHBOURS + 1)
            for image_id, row_labels, row_scores in zip(present, labels.tolist(), scores.tolist(), strict=True):
                for other, score in zip(row_labels, row_scores, strict=True):
                    if other != image_id and score >= threshold:
                        groups.join(image_id, other)
                        pair = (min(image_id, other), max(image_id, other))
                        similarity[pair] = max(similarity.get(pair, 0.0), score)
        run.step(done=min(len(ids), start + _BATCH))
    run.step(phase="saving groups")
    found = groups.members()
    images = Image.objects.in_bulk([i for group in found for i in group])
    rows = []
    for group in found:
        members = [images[i] for i in group if i in images]
        if len(members) < 2:
            continue
        lowest = min(s for (a, b), s in similarity.items() if a in group and b in group)
        # Proposed copy to keep first: the largest resolution, then the earliest upload.
        members.sort(key=lambda image: (-image.width * image.height, image.created_at, image.pk))
        rows.append(DuplicateGroup(scan=run.job, exact=lowest >= EXACT_SIMILARITY, lowest_similarity=lowest,
                                   image_ids=[image.pk for image in members]))
    DuplicateGroup.objects.bulk_create(rows)
    exact = sum(row.exact for row in rows)
    return (f"{len(rows)} groups of alike images among {len(ids)} ({exact} of exact copies) "
            f"at similarity {threshold:g} or more.")


def duplicate_groups_latest() -> tuple[Job | None, QuerySet[DuplicateGroup]]:
    """The groups still to be reviewed, exact copies first: those of the last successful scan, and the
    copies noticed at upload (``search.copy_notices``)."""
    scan = Job.objects.filter(kind=Job.Kind.DUPLICATE_SCAN, state=Job.State.SUCCEEDED).order_by("-finished_at").first()
    return scan, DuplicateGroup.objects.filter(Q(scan=scan) | Q(scan__isnull=True), resolved_at__isnull=True)
