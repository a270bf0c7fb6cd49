"""Descriptors, backbones and offline weights, without Django."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import models

from core.backbones import BACKBONES, WeightsMissing, descriptor_identity, get_backbone
from core.embedding import (
    Embedder,
    WeightsRejected,
    encode_jpegs,
    fold_batch_norms,
    gem,
    install_weights,
    load_trunk,
    resolve_device,
    upright,
)
from core.imaging import THUMBNAIL_MAX_SIDE, THUMBNAIL_QUALITY, decode_image, jpeg_orientation, thumbnail_jpeg
from tests import images


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path_factory.mktemp("weights"))


def test_descriptors_are_unit_float32_vectors(embedder):
    vectors = embedder.embed([images.picture(1), images.picture(2), images.picture(3, size=(50, 400))])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 640)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_same_picture_gives_the_same_vector_whatever_the_batch(embedder):
    alone = embedder.embed([images.picture(7)])
    batched = embedder.embed([images.picture(1), images.picture(7), images.picture(2)])
    assert np.allclose(alone[0], batched[1], atol=1e-4)


def test_an_edited_copy_is_closer_than_another_photo(embedder):
    original = Image.open(images.bench_image("cat", 1)).convert("RGB")
    edited = ImageOps.grayscale(original.filter(ImageFilter.GaussianBlur(1.5))).convert("RGB")
    edited = edited.crop((10, 10, original.width - 10, original.height - 10))
    other = Image.open(images.bench_image("cat", 2)).convert("RGB")
    a, b, c = embedder.embed([original, edited, other])
    assert a @ b > a @ c
    assert a @ b > 0.8


def test_any_image_mode_is_accepted(embedder):
    modes = [images.picture(1).convert(mode) for mode in ("L", "RGBA", "P", "CMYK")]
    assert embedder.embed(modes).shape == (4, 640)


def test_nothing_in_gives_nothing_out(embedder):
    assert embedder.embed([]).shape == (0, 640)


def test_the_identity_names_backbone_weights_and_recipe(embedder):
    identity = descriptor_identity(get_backbone("efficientnet_lite0"))
    assert identity == embedder.identity
    assert identity.backbone == "efficientnet_lite0"
    assert "57934424" in identity.backbone_version and "gem3" in identity.backbone_version
    assert "small96x0.5" in identity.backbone_version
    assert identity.dim == 640


def test_a_gallery_vector_blends_in_its_small_view_and_a_query_vector_does_not(embedder):
    pictures = [images.picture(1), Image.open(images.bench_image("cat", 1)).convert("RGB")]
    gallery = embedder.embed(pictures, gallery=True)
    query = embedder.embed(pictures)
    assert np.allclose(np.linalg.norm(gallery, axis=1), 1.0, atol=1e-5)
    prepared = torch.from_numpy(np.stack([embedder.prepare(p) for p in pictures]))
    assert np.array_equal(query, embedder.describe_pixels(prepared).vectors)
    small = torch.nn.functional.interpolate(prepared.permute(0, 3, 1, 2).float(), size=(96, 96), mode="bicubic",
                                            antialias=True).clamp(0, 255).round().to(torch.uint8)
    small_vectors = embedder.describe_pixels(small.permute(0, 2, 3, 1)).vectors
    blended = query + 0.5 * small_vectors
    assert np.allclose(gallery, blended / np.linalg.norm(blended, axis=1, keepdims=True), atol=1e-5)
    assert np.all(np.sum(gallery * query, axis=1) < 0.999)


def test_a_blurred_copy_is_closer_to_its_original_as_the_gallery_holds_it(embedder):
    original = Image.open(images.bench_image("cat", 1)).convert("RGB")
    blurred = original.filter(ImageFilter.GaussianBlur(2.5))
    query = embedder.embed([blurred])[0]
    assert query @ embedder.embed([original], gallery=True)[0] > query @ embedder.embed([original])[0]


def test_an_unknown_backbone_is_named_with_the_choices():
    with pytest.raises(ValueError, match="resnet50"):
        get_backbone("vgg")


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "mobilenet_v3_large"])
def test_missing_torchvision_weights_name_the_command_that_installs_them(name, tmp_path):
    with pytest.raises(WeightsMissing) as error:
        Embedder(get_backbone(name), weights_dir=tmp_path)
    assert f"python manage.py install_weights {name}" in str(error.value)
    assert "download.pytorch.org" in str(error.value)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


@pytest.fixture(scope="module")
def mobilenet_checkpoint(tmp_path_factory):
    """A checkpoint with the right architecture but untrained weights (the real file cannot be downloaded here)."""
    path = tmp_path_factory.mktemp("download") / "mobilenet_v3_large-5c1a4163.pth"
    torch.save(models.mobilenet_v3_large(weights=None).state_dict(), path)
    return path


class TestInstallWeights:
    def test_it_refuses_a_file_whose_checksum_differs_from_the_published_one(self, mobilenet_checkpoint, tmp_path):
        with pytest.raises(WeightsRejected, match="--ignore-checksum"):
            install_weights("mobilenet_v3_large", mobilenet_checkpoint, tmp_path)
        assert not list(tmp_path.iterdir())

    def test_it_installs_a_checkpoint_that_the_embedder_then_loads(self, mobilenet_checkpoint, tmp_path):
        target = install_weights("mobilenet_v3_large", mobilenet_checkpoint, tmp_path, ignore_checksum=True)
        assert target.name == "mobilenet_v3_large-5c1a4163.pth"
        assert [p.name for p in tmp_path.iterdir()] == [target.name]
        embedder = Embedder(get_backbone("mobilenet_v3_large"), weights_dir=tmp_path)
        assert embedder.embed([images.picture(1)]).shape == (1, 960)

    def test_it_refuses_a_file_that_is_not_a_checkpoint(self, tmp_path):
        bogus = tmp_path / "resnet50-11ad3fa6.pth"
        bogus.write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsRejected, match="does not hold resnet50 weights"):
            install_weights("resnet50", bogus, tmp_path / "weights", ignore_checksum=True)
        assert not (tmp_path / "weights").exists()

    def test_it_refuses_weights_of_another_architecture(self, mobilenet_checkpoint, tmp_path):
        with pytest.raises(WeightsRejected, match="efficientnet_b0"):
            install_weights("efficientnet_b0", mobilenet_checkpoint, tmp_path, ignore_checksum=True)

    def test_it_refuses_a_missing_file(self, tmp_path):
        with pytest.raises(WeightsRejected, match="not a file"):
            install_weights("resnet50", tmp_path / "nothing.pth", tmp_path)

    def test_the_default_backbone_needs_no_file(self, mobilenet_checkpoint, tmp_path):
        with pytest.raises(WeightsRejected, match="ships with the application"):
            install_weights("efficientnet_lite0", mobilenet_checkpoint, tmp_path)


def test_every_backbone_declares_its_dimension():
    assert {name: b.dim for name, b in BACKBONES.items()} == {
        "efficientnet_lite0": 640, "resnet50": 2048, "efficientnet_b0": 1280, "mobilenet_v3_large": 960}


def test_the_finer_feature_map_comes_with_the_vector(embedder):
    pictures = [images.picture(1), images.picture(2, size=(50, 400))]
    described = embedder.describe(pictures)
    assert described.local.dtype == np.float16
    assert described.local.shape == (2, 196, 112)
    # The map is the stride-16 stage's output, and the vector is still pooled from the last block.
    pixels = torch.from_numpy(np.stack([embedder.prepare(p) for p in pictures])).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        stride_16 = embedder.trunk[:12]((pixels - 127.5) / 127.5)
        last = embedder.trunk[12:](stride_16)
    assert np.allclose(described.local, stride_16.flatten(2).transpose(1, 2).numpy(), atol=2e-2)
    pooled = torch.cat([gem(last, 3.0), gem(-last, 3.0)], dim=1)
    assert np.allclose((pooled / pooled.norm(dim=1, keepdim=True)).numpy(), described.vectors, atol=2e-3)


def test_a_backbone_without_a_finer_map_keeps_the_one_its_vector_is_pooled_from():
    backbone = get_backbone("resnet50")
    assert backbone.local_depth is None and backbone.local_width == backbone.channels == 2048
    assert descriptor_identity(backbone).backbone_version.endswith("+local")
    assert descriptor_identity(get_backbone("efficientnet_lite0")).backbone_version.endswith("+local@12")


def test_gallery_images_come_with_the_classes_their_stored_map_gives_and_queries_without(embedder):
    from core.imagenet_head import ImagenetHead

    cat = Image.open(images.bench_image("cat", 1)).convert("RGB")
    described = embedder.describe([cat, images.picture(2)], gallery=True)

    assert described.classes is not None and described.classes.shape == (2, 1000)
    assert np.allclose(described.classes.sum(axis=1), 1.0, atol=1e-4)
    from_map = ImagenetHead(embedder.backbone).probabilities(described.local.astype(np.float32))
    assert np.allclose(described.classes, from_map, atol=1e-3)
    assert 281 <= described.classes[0].argmax() <= 285  # ImageNet's domestic cats
    assert embedder.describe([cat]).classes is None


def test_a_backbone_without_an_imagenet_classifier_gives_no_classes(mobilenet_checkpoint, tmp_path):
    install_weights("mobilenet_v3_large", mobilenet_checkpoint, tmp_path, ignore_checksum=True)
    described = Embedder(get_backbone("mobilenet_v3_large"), weights_dir=tmp_path).describe(
        [images.picture(1)], gallery=True)
    assert described.vectors.shape == (1, 960)
    assert described.classes is None


def test_describing_nothing_gives_empty_arrays_of_the_right_width(embedder):
    described = embedder.describe([])
    assert described.vectors.shape == (0, 640)
    assert described.local.shape == (0, 196, 112)


def test_torchvision_decodes_jpegs_on_the_device_like_pillow(tmp_path):
    # On a CUDA machine this is the GPU's decoder; the same code runs here on the CPU.
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path, batch_size=2,
                        jpeg_decoder="torchvision")
    assert embedder.decodes_jpeg_itself
    blobs = [images.bench_image("cat", n).read_bytes() for n in (1, 2, 3)]
    on_device = embedder.describe_jpegs(blobs)
    with_pillow = embedder.describe([Image.open(io.BytesIO(blob)) for blob in blobs])
    assert on_device.vectors.shape == (3, 640) and on_device.local.shape == (3, 196, 112)
    assert (np.sum(on_device.vectors * with_pillow.vectors, axis=1) > 0.97).all()


def test_a_damaged_jpeg_fails_the_device_decoder_loudly(tmp_path):
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path, jpeg_decoder="torchvision")
    with pytest.raises(RuntimeError):
        embedder.describe_jpegs([images.jpeg(1)[:200]])


@pytest.mark.parametrize(("decoder", "device", "expected"), [
    ("auto", "cpu", False), ("pillow", "cpu", False), ("torchvision", "cpu", True)])
def test_pillow_decodes_on_the_cpu_unless_told_otherwise(tmp_path, decoder, device, expected):
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path, device=device, jpeg_decoder=decoder)
    assert embedder.decodes_jpeg_itself is expected


def test_an_unknown_jpeg_decoder_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"LOOKALIKE_JPEG_DECODER.*auto, pillow, torchvision"):
        Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path, jpeg_decoder="libjpeg-turbo")


def test_folding_the_batch_norms_keeps_the_output_and_leaves_none():
    trunk = load_trunk(get_backbone("efficientnet_lite0"), Path("unused")).eval()
    pixels = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        before = trunk(pixels)
        folded = fold_batch_norms(trunk)
        after = folded(pixels)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    assert torch.allclose(before, after, atol=1e-3, rtol=1e-3)
    assert torch.nn.functional.cosine_similarity(before.flatten(1), after.flatten(1)).min() > 0.99999


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_decoded_on_the_device_is_turned_upright_as_pillow_turns_it(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    picture.info["exif"] = exif.tobytes()
    with_pillow = np.asarray(ImageOps.exif_transpose(picture))
    on_device = upright(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(on_device, with_pillow)


def test_the_device_path_gives_what_the_pillow_path_gives(tmp_path):
    """Run on the CPU here; on a CUDA machine the same calls decode, shrink and encode on the GPU."""
    embedder = Embedder(get_backbone("efficientnet_lite0"), weights_dir=tmp_path, jpeg_decoder="torchvision")
    exif = Image.Exif()
    exif[0x0112] = 8
    blobs = [images.encode(images.picture(n, size=(1200, 900)), "JPEG", quality=90, exif=exif.tobytes())
             for n in (1, 2)]
    decoded = embedder.decode_jpegs(blobs, [jpeg_orientation(blob) for blob in blobs])
    pictures = [decode_image(blob, max_pixels=10**8, max_side=THUMBNAIL_MAX_SIDE, min_side=224).image for blob in blobs]
    assert [tuple(d.shape[1:]) for d in decoded] == [(1200, 900)] * 2

    on_device = embedder.describe_decoded(decoded, gallery=True)
    with_pillow = embedder.describe(pictures, gallery=True)
    assert (np.sum(on_device.vectors * with_pillow.vectors, axis=1) > 0.98).all()

    for encoded, picture in zip(encode_jpegs(decoded, max_side=THUMBNAIL_MAX_SIDE, quality=THUMBNAIL_QUALITY),
                                pictures, strict=True):
        thumbnail = Image.open(io.BytesIO(encoded))
        expected = Image.open(io.BytesIO(thumbnail_jpeg(picture)))
        assert thumbnail.format == "JPEG" and thumbnail.size == expected.size == (300, 400)
        assert not thumbnail.getexif()
        error = np.mean((np.asarray(thumbnail, dtype=float) - np.asarray(expected, dtype=float)) ** 2)
        assert 10 * np.log10(255**2 / error) > 30


def test_a_map_at_a_smaller_size_matches_the_same_window_of_the_full_map(embedder):
    picture = images.picture(4, size=(320, 320))
    [full] = embedder.describe([picture]).local
    crop = picture.crop((0, 0, 160, 160))
    small, whole = embedder.local_maps_at(crop, [7, 14])
    assert small.shape == (49, 112) and whole.shape == (196, 112) and small.dtype == np.float32
    # The crop embedded at 7 x 7 positions lines up with the top-left quarter of the full map,
    # better than the crop blown up to the whole input does.
    quarter = full.reshape(14, 14, 112)[:7, :7].reshape(49, 112).astype(np.float32)
    blown_up = whole.reshape(14, 14, 112)[::2, ::2].reshape(49, 112)
    assert _mean_cosine(small, quarter) > _mean_cosine(blown_up, quarter)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-6)))
