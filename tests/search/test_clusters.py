"""Browse by look: the clustering job over the stored vectors, what it puts in service, and new uploads
joining the nearest cluster when they are embedded."""
import numpy as np
import pytest

from core import kmeans
from core.identity import IndexIdentity
from gallery.models import Cluster, Clustering, ClusterMember, Image
from jobs import services as job_services
from jobs.models import Job
from search import clusters, runtime
from search.models import Embedding
from search.tasks import cluster_gallery
from tests import images
from tests.conftest import store_indexed
from tests.search.test_words import row


def blob_vectors(centres: int, per_centre: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    directions = kmeans.normalised(rng.standard_normal((centres, dim)))
    return [kmeans.normalised((directions[c] + 0.01 * rng.standard_normal(dim))[None])[0]
            for c in range(centres) for _ in range(per_centre)]


def gallery_of(vectors: list[np.ndarray], identity: IndexIdentity, prefix: str = "img", **fields) -> list[Image]:
    """Indexed image rows with these stored vectors (no files: the job reads only rows)."""
    made = []
    for n, vector in enumerate(vectors):
        image = row(f"{prefix}-{n}.jpg", **fields)
        Embedding.objects.create(image=image, backbone=identity.backbone, backbone_version=identity.backbone_version,
                                 dim=identity.dim, vector=vector.astype(np.float32).tobytes())
        made.append(image)
    return made


def run_job() -> Job:
    job = clusters.clusters_start()
    job_services.job_execute(job_id=job.pk, token=job.claim_token)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.last_error
    return job


def cluster_of(image: Image) -> Cluster:
    return ClusterMember.objects.select_related("cluster").get(image=image, clustering=clusters.clustering_current()
                                                                ).cluster


@pytest.fixture
def identity(db) -> IndexIdentity:
    return runtime.index_identity()


def test_it_groups_the_gallery_by_its_vectors_and_numbers_the_groups_largest_first(identity, settings, monkeypatch):
    settings.LOOKALIKE_CLUSTER_COUNT = 3
    # Pages smaller than the gallery: the job streams it.
    monkeypatch.setattr(clusters, "BATCH", 7)
    sizes = (12, 8, 5)
    made = gallery_of([v for c, size in enumerate(sizes) for v in blob_vectors(1, size, identity.dim, seed=c)],
                      identity)
    groups = [made[:12], made[12:20], made[20:]]

    job = run_job()

    assert job.summary == "Grouped 25 images into 3 clusters."
    assert job.done == job.total == 25 * (kmeans.EPOCHS + 2)
    for number, members in enumerate(groups, start=1):
        assert {cluster_of(image).number for image in members} == {number}
    assert list(Cluster.objects.values_list("number", "size")) == [(1, 12), (2, 8), (3, 5)]
    centroid = np.frombuffer(bytes(Cluster.objects.get(number=1).centroid), dtype=np.float32)
    assert centroid.shape == (identity.dim,)


def test_a_new_run_replaces_the_clustering_whole_and_leaves_out_images_no_longer_indexed(identity, settings):
    settings.LOOKALIKE_CLUSTER_COUNT = 2
    made = gallery_of(blob_vectors(2, 6, identity.dim), identity)
    run_job()
    first = clusters.clustering_current()
    Image.objects.filter(pk=made[0].pk).update(state=Image.State.FAILED)

    run_job()

    current = clusters.clustering_current()
    assert current != first
    assert list(Clustering.objects.all()) == [current]
    assert ClusterMember.objects.filter(clustering=current).count() == 11
    assert not ClusterMember.objects.filter(image=made[0]).exists()


def test_the_count_follows_the_gallery_s_size_unless_set_and_an_empty_gallery_has_nothing_to_group(identity):
    job = run_job()
    assert job.summary == "Nothing to group: no image is indexed yet."
    assert clusters.clustering_current() is None

    gallery_of(blob_vectors(4, 10, identity.dim), identity)
    run_job()
    assert Cluster.objects.count() == kmeans.cluster_count(40) == 4


def test_only_one_job_runs_at_a_time_and_beat_starts_one_when_none_is(identity):
    first = clusters.clusters_start()
    assert clusters.clusters_start() == first
    cluster_gallery()
    assert Job.objects.filter(kind=Job.Kind.CLUSTERS).count() == 1


def test_a_new_upload_joins_its_nearest_cluster_when_it_is_embedded(identity, settings, bench_cat):
    settings.LOOKALIKE_CLUSTER_COUNT = 2
    gallery_of(blob_vectors(2, 5, identity.dim), identity)
    run_job()

    upload = store_indexed(bench_cat.read_bytes(), "cat.jpg")

    member = ClusterMember.objects.get(image=upload)
    vector = Embedding.objects.get(image=upload).as_array()
    mean = np.frombuffer(bytes(clusters.clustering_current().mean), dtype=np.float32)
    centred = kmeans.centred(vector[None], mean)[0]
    centroids = {c.pk: np.frombuffer(bytes(c.centroid), dtype=np.float32) for c in Cluster.objects.all()}
    assert member.cluster_id == max(centroids, key=lambda c: float(centroids[c] @ centred))
    assert member.similarity == pytest.approx(float(centroids[member.cluster_id] @ centred), abs=1e-5)


def test_an_upload_joins_nothing_while_no_clustering_or_one_of_other_vectors_is_in_service(identity):
    assert clusters.clusters_find(identity=identity, vectors={1: np.ones(identity.dim, dtype=np.float32)}) is None
    gallery_of(blob_vectors(2, 3, identity.dim), identity)
    run_job()
    Clustering.objects.update(backbone_version="an older version")

    upload = store_indexed(images.jpeg(3), "new.jpg")

    assert not ClusterMember.objects.filter(image=upload).exists()
    assert upload.state == Image.State.INDEXED


def test_images_found_a_place_in_a_clustering_replaced_before_they_are_indexed_wait_for_the_next_job(identity,
                                                                                                 settings):
    settings.LOOKALIKE_CLUSTER_COUNT = 2
    made = gallery_of(blob_vectors(2, 3, identity.dim), identity)
    run_job()
    late = row("late.jpg")
    found = clusters.clusters_find(identity=identity, vectors={late.pk: blob_vectors(2, 1, identity.dim)[0]})
    assert found is not None and set(found.places) == {late.pk}

    run_job()

    assert clusters.clusters_record(found=found, identity=identity, image_ids=[late.pk]) == 0
    assert not ClusterMember.objects.filter(image=late).exists()
    assert ClusterMember.objects.filter(image__in=made).count() == len(made)
