import numpy as np
import pytest
import torch
from django.conf import settings
from torchvision import models
from torchvision.transforms.functional import to_tensor

from config.object_store import object_store_bucket, snapshot_store_client
from core.backbones import get_backbone
from gallery.models import Image
from gallery.services import image_delete
from jobs import services as job_services
from jobs.models import Job
from search import changelog, generations, index_writer, reindex, runtime, selectors, services
from search.models import Embedding
from tests import images
from tests.conftest import store, store_indexed


def run(job: Job) -> Job:
    """Run the job in this process, as a worker would."""
    job.refresh_from_db()
    job_services.job_execute(job_id=job.pk, token=job.claim_token)
    job.refresh_from_db()
    return job


@pytest.fixture
def gallery(db, clean_index):
    stored = [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(6)]
    index_writer.index_sync()
    return stored


def stored_generations() -> set[str]:
    """The generations whose snapshots are kept: index folders, or key prefixes in the bucket."""
    if not (bucket := object_store_bucket()):
        return {p.name for p in settings.INDEX_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")}
    pages = snapshot_store_client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=generations.OBJECT_PREFIX, Delimiter="/")
    return {c["Prefix"][len(generations.OBJECT_PREFIX):-1] for page in pages for c in page.get("CommonPrefixes", [])}


def top_id(image: Image) -> int:
    vector = Embedding.objects.of(runtime.index_identity()).get(image=image).as_array()
    return selectors.similar_to_vectors(vector[None, :], k=1)[0][0].image.pk


class TestReindex:
    @pytest.fixture(autouse=True)
    def _snapshots(self, request, store_kind):
        """Each test on a local index folder and on the S3 gateway."""
        if store_kind == "gateway":
            request.getfixturevalue("s3_bucket")

    def test_it_builds_a_new_generation_with_new_parameters_and_puts_it_in_service(self, gallery):
        before = generations.active()
        job = run(reindex.reindex_start(m=8, ef_construction=50))
        assert job.state == Job.State.SUCCEEDED, job.last_error
        after = generations.active()
        assert after != before
        assert (after.m, after.ef_construction, after.backbone) == (8, 50, before.backbone)
        meta = after.store.read_meta()
        assert (meta.m, meta.ef_construction, meta.count) == (8, 50, len(gallery))
        assert "6 sampled images found themselves first; 6 vectors match the database" in job.summary
        assert (job.done, job.total, job.finished_at is not None) == (6, 6, True)
        assert [top_id(image) for image in gallery] == [image.pk for image in gallery]

    def test_each_reindex_keeps_the_generation_it_replaced_and_deletes_older_ones(self, gallery):
        first = generations.active()
        second = run(reindex.reindex_start(m=8))
        assert stored_generations() == {first.name, generations.active().name}
        run(reindex.reindex_start(m=10))
        assert stored_generations() == {f"efficientnet_lite0-g{second.pk}", generations.active().name}

    def test_changes_made_during_the_build_are_in_the_new_index(self, gallery, monkeypatch):
        added = []

        def upload_and_delete_during_the_build(progress, target):
            # Between reading the log position and building: as if uploads and a delete came meanwhile.
            added.append(store_indexed(images.jpeg(50), "late.jpg"))
            image_delete(image=Image.objects.get(pk=gallery[0].pk))
            return original_build(progress, target)

        original_build = reindex._build
        monkeypatch.setattr(reindex, "_build", upload_and_delete_during_the_build)
        job = run(reindex.reindex_start(m=12))
        assert job.state == Job.State.SUCCEEDED, job.last_error
        meta = generations.active().store.read_meta()
        index = generations.active().store.load(meta, runtime.index_params())
        assert index.ids() == {image.pk for image in gallery[1:]} | {added[0].pk}

    def test_a_cancelled_reindex_leaves_the_current_index_serving(self, gallery):
        before = generations.active()
        job = reindex.reindex_start(m=8)
        job_services.job_cancel(job=job)
        job.refresh_from_db()
        assert job.state == Job.State.CANCELLED
        assert job.last_error == "Cancelled before it started."
        assert generations.active() == before

    def test_a_reindex_cancelled_while_running_stops_and_says_so(self, gallery, monkeypatch):
        before = generations.active()
        job = reindex.reindex_start(m=8)
        original_step = job_services.JobRun.step

        def cancel_on_first_step(self, **kwargs):
            job_services.job_cancel(job=Job.objects.get(pk=self.job.pk))
            return original_step(self, **kwargs)

        monkeypatch.setattr(job_services.JobRun, "step", cancel_on_first_step)
        job = run(job)
        assert job.state == Job.State.CANCELLED
        assert "was cancelled" in job.last_error
        assert generations.active() == before
        assert f"{job.params['backbone']}-g{job.pk}" not in stored_generations()
        assert [top_id(image) for image in gallery] == [image.pk for image in gallery]

    def test_a_reindex_that_fails_its_self_check_is_not_put_in_service(self, gallery):
        before = generations.active()
        Embedding.objects.filter(image=gallery[2]).delete()
        job = run(reindex.reindex_start(m=8))
        assert job.state == Job.State.FAILED
        assert f"1 indexed images have no {before.backbone} vector (e.g. image #{gallery[2].pk})" in job.last_error
        assert generations.active() == before

    def test_only_one_reindex_runs_at_a_time(self, gallery):
        reindex.reindex_start(m=8)
        with pytest.raises(reindex.ReindexRefused, match="already queued; cancel it first"):
            reindex.reindex_start(m=10)

    @pytest.mark.parametrize(("options", "message"), [
        ({"backbone": "vgg"}, "vgg"),
        ({"m": 1}, "--m must be at least 2"),
        ({"ef_construction": 0}, "--ef-construction must be at least 1"),
    ])
    def test_bad_parameters_are_refused(self, db, clean_index, options, message):
        with pytest.raises(reindex.ReindexRefused, match=message):
            reindex.reindex_start(**options)
        assert not Job.objects.exists()


def install_untrained_resnet50() -> None:
    """Weights for a second backbone: untrained, with batch-norm statistics taken from a few
    pictures so that different pictures get different vectors, which is all a reindex needs."""
    weights = get_backbone("resnet50").torchvision
    assert weights is not None, "resnet50 is a torchvision backbone"
    checkpoint = weights.checkpoint_path(runtime.weights_dir())
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = models.resnet50(weights=None).train()
    with torch.no_grad():
        model(torch.stack([to_tensor(images.picture(1000 + i, (224, 224))) for i in range(16)]))
    torch.save(model.state_dict(), checkpoint)


@pytest.fixture
def second_backbone(settings, tmp_path):
    settings.TORCH_HOME = tmp_path / "torch"
    install_untrained_resnet50()
    runtime.embedder_for.cache_clear()
    yield
    runtime.embedder_for.cache_clear()


def test_a_reindex_to_another_backbone_embeds_everything_again_while_search_goes_on(gallery, second_backbone,
                                                                                     monkeypatch):
    old = runtime.index_identity()
    searched_during = []
    original_catch_up = reindex._catch_up

    def search_and_upload_before_the_catch_up(progress, target, index):
        # The old index still answers, with new vectors of the other backbone already stored.
        searched_during.append([top_id(image) for image in gallery])
        late = store(images.jpeg(77), "late.jpg")
        services.image_embed(image_id=late.pk, claim_token="late")
        searched_during.append(late.pk)
        return original_catch_up(progress, target, index)

    monkeypatch.setattr(reindex, "_catch_up", search_and_upload_before_the_catch_up)
    job = run(reindex.reindex_start(backbone="resnet50"))
    assert job.state == Job.State.SUCCEEDED, job.last_error
    assert searched_during[0] == [image.pk for image in gallery]
    new = runtime.index_identity()
    assert new.backbone == "resnet50" and new.dim == 2048
    assert job.total == 12 and job.done == 12
    late_id = searched_during[1]
    assert set(Embedding.objects.values_list("backbone", flat=True)) == {"resnet50"}
    assert Embedding.objects.count() == len(gallery) + 1
    assert generations.active().replaced == (old.backbone, old.backbone_version)
    meta = generations.active().store.read_meta()
    assert meta.count == len(gallery) + 1 and meta.dim == 2048
    assert top_id(Image.objects.get(pk=late_id)) == late_id
    assert [top_id(image) for image in gallery] == [image.pk for image in gallery]
    assert np.isclose(np.linalg.norm(Embedding.objects.first().as_array()), 1.0, atol=1e-4)


class TestEmbedsThatRaceAReindex:
    """An embedding batch that overlaps a reindex's switch of generation or its cancel."""

    def test_a_batch_embedded_with_the_old_backbone_goes_back_to_the_queue_when_the_switch_comes_first(
            self, gallery, second_backbone, monkeypatch):
        upload = store(images.jpeg(60), "late.jpg")
        original_embed = services.images_embed_with
        switches: list[Job] = []

        def switch_backbones_after_the_embed(*, embedder, images):
            described = original_embed(embedder=embedder, images=images)
            if not switches:
                switches.append(run(reindex.reindex_start(backbone="resnet50")))
            return described

        monkeypatch.setattr(services, "images_embed_with", switch_backbones_after_the_embed)
        services.image_embed(image_id=upload.pk, claim_token="across-the-switch")
        assert switches[0].state == Job.State.SUCCEEDED, switches[0].last_error
        upload.refresh_from_db()
        assert upload.state == Image.State.QUEUED
        assert not Embedding.objects.filter(image=upload).exists()
        assert index_writer.index_sync().status in ("published", "up_to_date")
        assert [top_id(image) for image in gallery] == [image.pk for image in gallery]

        monkeypatch.setattr(services, "images_embed_with", original_embed)
        services.image_embed(image_id=upload.pk, claim_token="after-the-switch")
        upload.refresh_from_db()
        assert upload.state == Image.State.INDEXED
        [vector] = Embedding.objects.filter(image=upload)
        assert (vector.backbone, vector.dim, vector.as_array().shape) == ("resnet50", 2048, (2048,))
        assert top_id(upload) == upload.pk

    def test_an_upload_left_without_a_vector_of_the_new_backbone_is_queued_again_by_the_switch(
            self, gallery, second_backbone, monkeypatch):
        uploads: list[Image] = []
        real_embedder_for = runtime.embedder_for
        original_self_check = reindex._self_check

        def no_memory_for_resnet50(backbone):
            if backbone == "resnet50":
                raise RuntimeError("out of memory")
            return real_embedder_for(backbone)

        def upload_after_the_catch_up(target, index, *, as_of_seq):
            # The upload's second-backbone embed fails, and its batch commits after the catch-up.
            monkeypatch.setattr(runtime, "embedder_for", no_memory_for_resnet50)
            uploads.append(store(images.jpeg(61), "late.jpg"))
            services.image_embed(image_id=uploads[0].pk, claim_token="dual")
            monkeypatch.setattr(runtime, "embedder_for", real_embedder_for)
            return original_self_check(target, index, as_of_seq=as_of_seq)

        monkeypatch.setattr(reindex, "_self_check", upload_after_the_catch_up)
        job = run(reindex.reindex_start(backbone="resnet50"))
        assert job.state == Job.State.SUCCEEDED, job.last_error
        [upload] = uploads
        upload.refresh_from_db()
        assert upload.state == Image.State.QUEUED
        assert not Embedding.objects.filter(image=upload).exists()

        services.image_embed(image_id=upload.pk, claim_token="again")
        upload.refresh_from_db()
        assert upload.state == Image.State.INDEXED
        assert list(Embedding.objects.filter(image=upload).values_list("backbone", flat=True)) == ["resnet50"]
        assert top_id(upload) == upload.pk

    def test_vectors_for_a_reindex_cancelled_before_the_batch_commits_are_dropped(
            self, gallery, second_backbone, monkeypatch):
        job = reindex.reindex_start(backbone="resnet50")
        upload = store(images.jpeg(62), "during.jpg")
        original_embed = services.images_embed_with

        def cancel_after_the_second_backbone(*, embedder, images):
            described = original_embed(embedder=embedder, images=images)
            if embedder.backbone.name == "resnet50":
                job_services.job_cancel(job=Job.objects.get(pk=job.pk))
            return described

        monkeypatch.setattr(services, "images_embed_with", cancel_after_the_second_backbone)
        services.image_embed(image_id=upload.pk, claim_token="during-the-reindex")
        upload.refresh_from_db()
        assert upload.state == Image.State.INDEXED
        assert set(Embedding.objects.values_list("backbone", flat=True)) == {"efficientnet_lite0"}
        assert top_id(upload) == upload.pk
        assert [top_id(image) for image in gallery] == [image.pk for image in gallery]

    def test_a_sync_asked_during_the_purge_runs_once_the_reindex_lets_go_of_the_index(
            self, gallery, second_backbone, monkeypatch, settings):
        settings.LOOKALIKE_SNAPSHOT_INTERVAL = 0
        syncs: list[index_writer.IndexSyncResult] = []
        uploads: list[Image] = []
        original_purge = reindex._purge_vectors_other_than

        def upload_during_the_purge(target):
            uploads.append(store(images.jpeg(63), "late.jpg"))
            services.image_embed(image_id=uploads[0].pk, claim_token="during-the-purge")
            syncs.append(index_writer.index_sync())
            return original_purge(target)

        monkeypatch.setattr(reindex, "_purge_vectors_other_than", upload_during_the_purge)
        monkeypatch.setattr(reindex, "queue_index_sync", lambda: syncs.append(index_writer.index_sync()))
        job = run(reindex.reindex_start(backbone="resnet50"))
        assert job.state == Job.State.SUCCEEDED, job.last_error
        assert syncs[-1].status == "published"
        meta = generations.active().store.read_meta()
        assert meta.applied_seq == changelog.last_seq()
        assert generations.active().store.load(meta, runtime.index_params()).ids() == {
            image.pk for image in [*gallery, *uploads]}
