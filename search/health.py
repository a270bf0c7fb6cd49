"""Reads for the index health page and ``python manage.py index_status``."""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from core.identity import IndexIdentity
from core.index import HnswIndex, SnapshotCorrupt, SnapshotUnavailable, exact_search
from jobs.models import Job
from search import changelog, generations, latency
from search.models import Embedding, IndexChange

RECALL_K = 10
_EXACT_CHUNK = 5000


@dataclass(frozen=True)
class RecallCheck:
    sample: int
    top1_self: float  # share of sampled images that came first when searched with their own vector
    recall_at_10: float  # mean overlap of the index's top 10 with exact search's top 10


@dataclass(frozen=True)
class IndexHealth:
    generation: str
    backbone: str
    backbone_version: str
    dim: int
    configured_backbone: str
    m: int
    ef_construction: int
    ef_search: int
    vectors_in_database: int
    vectors_in_index: int | None
    deleted_not_purged: int | None
    last_snapshot_at: datetime | None
    changes_behind: int
    behind_since: timedelta | None
    snapshot_problem: str
    recall: RecallCheck | None
    latency_p50_ms: float
    latency_p99_ms: float
    latency_queries: int
    reindex: Job | None

    def rows(self) -> list[tuple[str, str]]:
        """Label and value of each line, as the page and the command show them."""
        def maybe(value: object) -> str:
            return "-" if value is None else str(value)

        recall = (f"top-1 is itself for {self.recall.top1_self:.1%}, recall@{RECALL_K} {self.recall.recall_at_10:.3f} "
                  f"against exact search ({self.recall.sample} sampled)" if self.recall else "no vectors to sample")
        latency_text = (f"p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms over the last "
                        f"{self.latency_queries} searches" if self.latency_queries else "no searches yet")
        backbone = f"{self.backbone} ({self.backbone_version})"
        if self.configured_backbone != self.backbone:
            backbone += f"; LOOKALIKE_BACKBONE says {self.configured_backbone}: run `python manage.py reindex`"
        return [
            ("Index generation", self.generation),
            ("Backbone", backbone),
            ("Dimension", str(self.dim)),
            ("Vectors in the database", str(self.vectors_in_database)),
            ("Vectors in the index", maybe(self.vectors_in_index)),
            ("Deleted, not yet purged", maybe(self.deleted_not_purged)),
            ("Last snapshot", maybe(self.last_snapshot_at and self.last_snapshot_at.isoformat(timespec="seconds"))),
            ("Behind the database", f"{self.changes_behind} changes" + (
                f", oldest {self.behind_since.total_seconds():.1f} s ago" if self.behind_since else "")),
            ("HNSW parameters", f"M={self.m}, ef_construction={self.ef_construction}, ef_search={self.ef_search}"),
            ("Recall self-check", recall),
            ("Search latency", latency_text),
            ("Snapshot problem", self.snapshot_problem or "none"),
            ("Reindex in progress", f"{self.reindex} ({self.reindex.phase or self.reindex.state}, "
                                    f"{self.reindex.percent}%)" if self.reindex else "none"),
        ]


def index_health(*, sample: int = 100) -> IndexHealth:
    generation = generations.active()
    identity = generation.identity
    store = generation.store
    problem = ""
    index = meta = None
    try:
        meta = store.read_meta()
        if meta is not None and meta.identity == identity:
            index = store.load(meta, generation.params)
        elif meta is not None:
            problem = f"the snapshot holds {meta.identity.describe()} vectors"
        else:
            problem = "no snapshot has been published yet"
    except (SnapshotCorrupt, SnapshotUnavailable) as exc:
        problem = str(exc)
    applied = meta.applied_seq if meta else 0
    first_behind = IndexChange.objects.filter(seq__gt=applied).order_by("seq").values_list("created_at",
                                                                                             flat=True).first()
    times = latency.recent()
    p50, p99 = latency.percentiles(times, 50, 99)
    return IndexHealth(
        generation=generation.name, backbone=identity.backbone, backbone_version=identity.backbone_version,
        dim=identity.dim, configured_backbone=settings.LOOKALIKE_BACKBONE, m=generation.m,
        ef_construction=generation.ef_construction, ef_search=generation.params.ef_search,
        vectors_in_database=Embedding.objects.of(identity).count(),
        vectors_in_index=index.count if index else None, deleted_not_purged=index.deleted_count if index else None,
        last_snapshot_at=datetime.fromtimestamp(meta.created_at, tz=UTC) if meta else None,
        changes_behind=changelog.last_seq() - applied,
        behind_since=timezone.now() - first_behind if first_behind else None,
        snapshot_problem=problem,
        recall=_recall(index, identity, sample) if index and index.count and sample > 0 else None,
        latency_p50_ms=p50 * 1000, latency_p99_ms=p99 * 1000, latency_queries=len(times),
        reindex=Job.objects.filter(kind=Job.Kind.REINDEX, state__in=Job.ACTIVE_STATES).first(),
    )


def _recall(index: HnswIndex, identity: IndexIdentity, sample: int) -> RecallCheck:
    ids = sorted(index.ids())
    chosen = random.Random().sample(ids, min(sample, len(ids)))
    stored = changelog.vectors_for(identity, chosen)
    chosen = [i for i in chosen if i in stored]
    queries = np.stack([stored[i] for i in chosen])
    approx_ids, _ = index.search(queries, RECALL_K)
    exact_ids = _exact_top(queries, identity, RECALL_K, among=set(ids))
    top1 = float(np.mean([row[0] == image_id for row, image_id in zip(approx_ids, chosen, strict=True)]))
    recall = float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approx_ids.tolist(),
                                                                                   exact_ids, strict=True)]))
    return RecallCheck(sample=len(chosen), top1_self=top1, recall_at_10=recall)


def _exact_top(queries: np.ndarray, identity: IndexIdentity, k: int, *, among: set[int]) -> list[list[int]]:
    """Exact top-k over the stored vectors of the images ``among`` (those the index holds), read in
    chunks so that memory stays bounded."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    rows = Embedding.objects.of(identity).order_by("image_id").values_list("image_id", "vector")
    after = 0
    while chunk := list(rows.filter(image_id__gt=after)[:_EXACT_CHUNK]):
        after = chunk[-1][0]
        chunk = [(i, v) for i, v in chunk if i in among]
        if not chunk:
            continue
        ids = np.fromiter((i for i, _ in chunk), dtype=np.int64, count=len(chunk))
        vectors = np.stack([np.frombuffer(bytes(v), dtype=np.float32) for _, v in chunk])
        top_ids, top_scores = exact_search(queries, ids, vectors, k)
        merged_ids = np.concatenate([best_ids, top_ids], axis=1)
        merged_scores = np.concatenate([best_scores, top_scores], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
    return best_ids.tolist()
