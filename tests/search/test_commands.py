import io
import json

import pytest
import torch
from django.core.management import CommandError, call_command
from torchvision import models

from gallery.models import Image
from jobs.models import Job
from search import runtime
from tests import images
from tests.conftest import store_indexed


@pytest.fixture
def gallery(db, clean_index):
    return [store_indexed(images.jpeg(i), f"picture-{i}.jpg") for i in range(4)]


def search(*args: str) -> str:
    out = io.StringIO()
    call_command("search_image", *args, stdout=out)
    return out.getvalue()


class TestSearchImage:
    def test_it_prints_one_json_line_per_query(self, gallery, tmp_path):
        queries = []
        for i in (2, 0):
            path = tmp_path / f"query-{i}.jpg"
            path.write_bytes(images.jpeg(i))
            queries.append(str(path))
        lines = [json.loads(line) for line in search(*queries, "--k", "3", "--json").splitlines()]
        assert [line["query"] for line in lines] == queries
        assert [line["results"][0]["id"] for line in lines] == [gallery[2].pk, gallery[0].pk]
        first = lines[0]["results"][0]
        assert set(first) == {"id", "original_name", "score"}
        assert first["original_name"] == "picture-2.jpg"
        # The gallery holds the picture's vector blended with its small view's, so the picture
        # itself comes close to 1 without reaching it.
        assert 0.97 < first["score"] < 1.0
        assert len(lines[0]["results"]) == 3

    def test_a_file_it_cannot_use_gets_an_error_line_and_the_rest_go_on(self, gallery, tmp_path):
        good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
        good.write_bytes(images.jpeg(1))
        bad.write_text("not a picture")
        missing = str(tmp_path / "missing.jpg")
        lines = [json.loads(line) for line in search(str(bad), missing, str(good), "--json").splitlines()]
        assert lines[0] == {"query": str(bad), "error": lines[0]["error"]}
        assert "not an image" in lines[0]["error"]
        assert lines[1] == {"query": missing, "error": "cannot be read: No such file or directory"}
        assert lines[2]["results"][0]["id"] == gallery[1].pk

    def test_it_prints_a_table_by_default(self, gallery, tmp_path):
        path = tmp_path / "q.jpg"
        path.write_bytes(images.jpeg(3))
        out = search(str(path), "--k", "2")
        assert out.splitlines()[0] == str(path)
        assert f"#{gallery[3].pk}" in out.splitlines()[1] and "picture-3.jpg" in out.splitlines()[1]
        assert len(out.splitlines()) == 3

    @pytest.mark.parametrize("k", ["0", "-1", "100000"])
    def test_k_out_of_bounds_is_an_error(self, db, k, tmp_path):
        with pytest.raises(CommandError, match="--k must be between 1 and"):
            search(str(tmp_path / "q.jpg"), "--k", k)

    def test_an_empty_gallery_gives_empty_results(self, db, clean_index, tmp_path):
        path = tmp_path / "q.jpg"
        path.write_bytes(images.jpeg(3))
        assert json.loads(search(str(path), "--json")) == {"query": str(path), "results": []}

    def test_missing_weights_are_a_clear_error(self, db, settings, tmp_path):
        settings.LOOKALIKE_BACKBONE = "efficientnet_b0"
        settings.TORCH_HOME = tmp_path
        runtime.embedder_for.cache_clear()
        try:
            with pytest.raises(CommandError, match="install_weights efficientnet_b0"):
                search(str(tmp_path / "q.jpg"))
        finally:
            runtime.embedder_for.cache_clear()


class TestRebuildIndex:
    def test_it_publishes_a_snapshot_of_every_vector(self, gallery):
        out = io.StringIO()
        call_command("rebuild_index", stdout=out)
        assert "4 vectors of efficientnet_lite0" in out.getvalue()
        assert runtime.snapshot_store().read_meta().count == 4

    def test_reembed_starts_a_reindex_in_the_background(self, gallery):
        out = io.StringIO()
        call_command("rebuild_index", "--reembed", stdout=out)
        job = Job.objects.get(kind=Job.Kind.REINDEX)
        assert out.getvalue().startswith(f"Started {job} (efficientnet_lite0, M=16, ef_construction=200)")
        assert set(Image.objects.values_list("state", flat=True)) == {Image.State.INDEXED}


class TestReindex:
    def test_it_starts_a_reindex_with_the_parameters_given(self, gallery):
        out = io.StringIO()
        call_command("reindex", "--m", "8", "--ef-construction", "40", stdout=out)
        job = Job.objects.get(kind=Job.Kind.REINDEX)
        assert job.params == {"backbone": "efficientnet_lite0", "m": 8, "ef_construction": 40, "batch_size": 256}
        assert f"Started {job}" in out.getvalue()

    def test_a_second_reindex_is_refused_while_one_runs(self, gallery):
        call_command("reindex", stdout=io.StringIO())
        with pytest.raises(CommandError, match="already queued; cancel it first"):
            call_command("reindex", stdout=io.StringIO())

    def test_an_unknown_backbone_is_refused(self, gallery):
        with pytest.raises(CommandError, match="invalid choice: 'vgg'"):
            call_command("reindex", "--backbone", "vgg")


class TestInstallWeights:
    def test_it_installs_where_the_embedder_looks(self, db, settings, tmp_path):
        settings.TORCH_HOME = tmp_path / "torch"
        source = tmp_path / "download.pth"
        torch.save(models.mobilenet_v3_large(weights=None).state_dict(), source)
        out = io.StringIO()
        call_command("install_weights", "mobilenet_v3_large", str(source), "--ignore-checksum", stdout=out)
        assert (tmp_path / "torch/hub/checkpoints/mobilenet_v3_large-5c1a4163.pth").exists()
        assert "Installed mobilenet_v3_large weights" in out.getvalue()

    def test_a_wrong_file_is_a_clear_error(self, db, settings, tmp_path):
        settings.TORCH_HOME = tmp_path / "torch"
        source = tmp_path / "download.pth"
        source.write_bytes(b"not weights")
        with pytest.raises(CommandError, match=r"is not resnet50-11ad3fa6\.pth"):
            call_command("install_weights", "resnet50", str(source))
