import io
import json

import numpy as np
from django.core.management import call_command

from core.index import HnswIndex
from search import changelog, index_writer, runtime, selectors
from search.health import index_health
from search.models import Embedding
from tests import images
from tests.conftest import store_indexed


def test_it_reports_counts_lag_parameters_recall_and_latency(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(5)]
    index_writer.index_sync()
    store_indexed(images.jpeg(9), "late.jpg")
    vector = Embedding.objects.get(image=stored[0]).as_array()
    for _ in range(4):
        selectors.similar_to_vectors(vector[None, :], k=3)
    health = index_health(sample=5)
    assert (health.vectors_in_database, health.vectors_in_index, health.deleted_not_purged) == (6, 5, 0)
    assert health.changes_behind == 1 and health.behind_since is not None
    assert (health.m, health.ef_construction, health.ef_search, health.dim) == (16, 200, 256, 640)
    assert (health.recall.sample, health.recall.top1_self, health.recall.recall_at_10) == (5, 1.0, 1.0)
    assert health.latency_queries >= 4 and 0 < health.latency_p50_ms <= health.latency_p99_ms
    assert health.last_snapshot_at is not None and health.snapshot_problem == ""


def test_the_self_check_notices_an_index_whose_vectors_are_not_the_stored_ones(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"{i}.jpg") for i in range(8)]
    identity = runtime.index_identity()
    ids = np.array([image.pk for image in stored])
    vectors = np.stack([Embedding.objects.get(image=image).as_array() for image in stored])
    # Each id carries another image's vector, as after a mix-up in the index.
    mixed = HnswIndex(identity, runtime.index_params())
    mixed.upsert(ids, np.roll(vectors, 1, axis=0))
    runtime.snapshot_store().publish(mixed, applied_seq=changelog.last_seq())
    health = index_health(sample=8)
    assert health.recall.top1_self == 0.0
    assert health.recall.recall_at_10 == 1.0  # the same eight images come back, in another order


def test_index_status_prints_each_line_and_json(db, clean_index):
    store_indexed(images.jpeg(1))
    index_writer.index_sync()
    out = io.StringIO()
    call_command("index_status", "--sample", "1", stdout=out)
    text = out.getvalue()
    for label in ("Backbone", "Dimension", "Vectors in the database", "Vectors in the index",
                  "Deleted, not yet purged", "Last snapshot", "Behind the database", "HNSW parameters",
                  "Recall self-check", "Search latency"):
        assert label in text
    out = io.StringIO()
    call_command("index_status", "--json", "--sample", "0", stdout=out)
    data = json.loads(out.getvalue())
    assert data["vectors_in_index"] == 1 and data["recall"] is None


def test_an_index_without_a_snapshot_says_so(db, clean_index):
    health = index_health(sample=5)
    assert health.vectors_in_index is None
    assert health.snapshot_problem == "no snapshot has been published yet"
