"""Image descriptors from pretrained CNN backbones. Free of Django, so it can be tested and
benchmarked on its own.

A descriptor is a feature map of the backbone pooled with generalized mean (GeM) pooling and
L2-normalised: one float32 vector per image whose dot product with another is their cosine
similarity. ``descriptor_identity`` names the backbone, its weights and the recipe, so that
vectors made in different ways are never compared with each other. A gallery image's vector,
the one the index holds, also carries a small view of the image; a query's does not
(``core.backbones.Recipe``).

For EfficientNet-Lite0 the descriptor is taken before the classification head, from the
last inverted-residual block: those 320 channels have no activation, so both their positive
and their negative parts are pooled (640 dimensions). On the copy-detection benchmark this
found the original first more often than GeM over the 1280-channel head (docs/benchmarks.md).
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models
from torchvision.ops.misc import ConvNormActivation

from core import efficientnet_lite
from core.allocator import keep_freed_memory
from core.backbones import DEFAULT_RECIPE, Backbone, Recipe, WeightsMissing, descriptor_identity, get_backbone
from core.identity import IndexIdentity


class WeightsRejected(ValueError):
    """A weights file offered to ``install_weights`` is not the one the backbone needs."""


_TRUNKS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "children": lambda model: nn.Sequential(*list(model.children())[:-2]),
    "features": lambda model: cast(nn.Module, model.features),
}


def load_trunk(backbone: Backbone, weights_dir: Path) -> nn.Module:
    """The backbone's convolutional trunk with its pretrained weights."""
    tv = backbone.torchvision
    if tv is None:
        return efficientnet_lite.efficientnet_lite0().features[:-1]
    checkpoint = tv.checkpoint_path(weights_dir)
    if not checkpoint.exists():
        raise WeightsMissing(
            f"The {backbone.name} weights are not installed (looked for {checkpoint}). This machine cannot "
            f"download them: fetch {tv.url} elsewhere, then run "
            f"`python manage.py install_weights {backbone.name} PATH/TO/{checkpoint.name}`."
        )
    model = getattr(models, tv.architecture)(weights=None)
    # torchvision's own loader, which finds the file in its cache directory.
    model.load_state_dict(models.get_weight(tv.weights).get_state_dict(model_dir=str(weights_dir), progress=False))
    return _TRUNKS[tv.trunk](model)


def load_imagenet_classifier(backbone: Backbone) -> nn.Module | None:
    """What turns the trunk's output into ImageNet class logits, for the backbone that has it
    (EfficientNet-Lite0: the head's 1 x 1 convolution to 1,280 channels, average pooling and the
    classifier), or None. Run on the map the descriptor is pooled from, it costs about a twentieth
    of the forward pass, where running the network again from the stored map costs a sixth."""
    if backbone.torchvision is not None:
        return None
    model = efficientnet_lite.efficientnet_lite0()
    return nn.Sequential(model.features[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)


def gem(features: torch.Tensor, p: float) -> torch.Tensor:
    """Generalized mean over the spatial positions: between average (p=1) and max pooling."""
    return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


JPEG_DECODERS = ("auto", "pillow", "torchvision")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("LOOKALIKE_DEVICE asks for CUDA, but no CUDA device is available.")
    return device


@dataclass(frozen=True)
class Descriptors:
    """What the embedder makes of a batch of images.

    ``vectors``: one L2-normalised float32 vector per image, for the index. ``local``: a
    feature map (``Backbone.local_depth`` says which), positions x channels in float16, kept
    with the vector so that the best candidates of a search can be compared position by position.
    ``classes``: for gallery images, with a backbone that has an ImageNet classifier, images x 1,000
    class probabilities of the whole picture (the small view aside), from which tags are suggested
    while nothing is tagged; otherwise None.
    """

    vectors: np.ndarray
    local: np.ndarray
    classes: np.ndarray | None = None


def fold_batch_norms(trunk: nn.Module) -> nn.Module:
    """Fold each batch norm that follows a convolution into that convolution, in place.

    At inference a batch norm is a fixed per-channel scale and shift, which the convolution's
    weights and bias can carry; run apart, it costs about a fifth of the CPU forward pass.
    """
    for block in trunk.modules():
        if isinstance(block, ConvNormActivation) and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(cast(nn.Conv2d, block[0]), block[1])
            block[1] = nn.Identity()
    return trunk


class Embedder:
    """Turns decoded RGB images into L2-normalised float32 descriptors.

    One instance holds one model; make it once per process and reuse it.
    """

    def __init__(self, backbone: Backbone, *, weights_dir: Path, device: str = "cpu",
                 recipe: Recipe = DEFAULT_RECIPE, batch_size: int = 8, jpeg_decoder: str = "auto") -> None:
        if jpeg_decoder not in JPEG_DECODERS:
            raise ValueError(f"LOOKALIKE_JPEG_DECODER is {jpeg_decoder!r}; choose one of {', '.join(JPEG_DECODERS)}.")
        self.backbone = backbone
        self.recipe = recipe
        self.batch_size = batch_size
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        # On a GPU, torchvision's decoder keeps up with the model where Pillow on the CPU cannot
        # (docs/benchmarks.md); on the CPU, Pillow's reduced-scale draft decoding is faster.
        self.decodes_jpeg_itself = jpeg_decoder == "torchvision" or (
            jpeg_decoder == "auto" and self.device.type == "cuda")
        # bfloat16 on a GPU halves memory traffic; on this kind of CPU it is slower than float32.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        trunk = fold_batch_norms(load_trunk(backbone, weights_dir).eval())
        self.trunk = trunk.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        # The trunk in two parts: up to the map kept for re-ranking, and the rest.
        depth = backbone.local_depth
        blocks = cast(nn.Sequential, self.trunk)
        self._to_local_map: nn.Module = self.trunk if depth is None else blocks[:depth]
        self._after_local_map: nn.Module = nn.Identity() if depth is None else blocks[depth:]
        self._mean = torch.tensor(backbone.mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(backbone.std, device=self.device).view(1, 3, 1, 1) * 255

    @functools.cached_property
    def _classifier(self) -> nn.Module | None:
        """Loaded with the first gallery batch: a process that only searches never needs it."""
        classifier = load_imagenet_classifier(self.backbone)
        if classifier is None:
            return None
        return fold_batch_norms(classifier.eval()).to(self.device, self.dtype).to(memory_format=torch.channels_last)

    @property
    def identity(self) -> IndexIdentity:
        return descriptor_identity(self.backbone, self.recipe)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def prepare(self, image: Image.Image, *, size: int | None = None) -> np.ndarray:
        """Resize one RGB image to the network's input (or to ``size`` x ``size``): uint8, height x
        width x 3."""
        size = size or self.recipe.input_size
        if image.mode != "RGB":
            image = image.convert("RGB")
        # Squashing the whole picture into the square keeps every part of it; a centre crop
        # would throw away the borders that an edited copy may still share with the original.
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))

    def embed(self, images: Sequence[Image.Image], *, gallery: bool = False) -> np.ndarray:
        return self.describe(images, gallery=gallery).vectors

    def describe(self, images: Sequence[Image.Image], *, gallery: bool = False) -> Descriptors:
        """Descriptors of queries, or with ``gallery`` of images to index (see ``Recipe``)."""
        return self.describe_prepared([self.prepare(image) for image in images], gallery=gallery)

    def describe_prepared(self, arrays: Sequence[np.ndarray], *, gallery: bool = False) -> Descriptors:
        return self._joined([self.describe_pixels(torch.from_numpy(np.stack(arrays[i:i + self.batch_size])),
                                                  gallery=gallery)
                             for i in range(0, len(arrays), self.batch_size)])

    def describe_jpegs(self, blobs: Sequence[bytes], *, gallery: bool = False) -> Descriptors:
        """Descriptors of JPEG files, decoded and resized by torchvision on the embedder's device.

        Raises ``RuntimeError`` when a file cannot be decoded; ``prepare`` with Pillow then
        tells which one.
        """
        return self.describe_decoded(self.decode_jpegs(blobs), gallery=gallery)

    def decode_jpegs(self, blobs: Sequence[bytes], orientations: Sequence[int] = ()) -> list[torch.Tensor]:
        """JPEG files decoded by torchvision on the embedder's device, in one call per batch: RGB
        uint8 tensors, channels x height x width, turned upright by their EXIF ``orientations``
        (read from the headers on the host: the device decoder does not apply them).

        Raises ``RuntimeError`` when a file cannot be decoded.
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        decoded: list[torch.Tensor] = []
        for start in range(0, len(blobs), self.batch_size):
            data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                    for blob in blobs[start:start + self.batch_size]]
            decoded += decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        if orientations:
            decoded = [upright(image, orientation) for image, orientation in zip(decoded, orientations, strict=True)]
        return decoded

    def describe_decoded(self, decoded: Sequence[torch.Tensor], *, gallery: bool = False) -> Descriptors:
        """Descriptors of decoded images (uint8, channels x height x width, on any device), each
        resized to the network's input where it lies."""
        size = self.recipe.input_size
        parts = []
        for start in range(0, len(decoded), self.batch_size):
            resized = [F.interpolate(image[None].to(self.device).float(), size=(size, size), mode="bicubic",
                                     antialias=True) for image in decoded[start:start + self.batch_size]]
            pixels = torch.cat(resized).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            parts.append(self.describe_pixels(pixels, gallery=gallery))
        return self._joined(parts)

    def _joined(self, parts: list[Descriptors]) -> Descriptors:
        if not parts:
            grid = self.recipe.input_size // self.backbone.local_stride
            return Descriptors(np.zeros((0, self.dim), dtype=np.float32),
                               np.zeros((0, grid * grid, self.backbone.local_width), dtype=np.float16))
        classes = [d.classes for d in parts if d.classes is not None]
        return Descriptors(np.concatenate([d.vectors for d in parts]), np.concatenate([d.local for d in parts]),
                           np.concatenate(classes) if len(classes) == len(parts) else None)

    @torch.inference_mode()
    def describe_pixels(self, pixels: torch.Tensor, *, gallery: bool = False) -> Descriptors:
        """Descriptors of a batch of prepared uint8 pixels, batch x height x width x 3, on any device.

        With ``gallery``, each vector is blended with its small view's (see ``Recipe``), and the
        classes are given where the backbone has a classifier.
        """
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        local_map = self._to_local_map(self._normalised(x))
        final_map = self._after_local_map(local_map)
        vectors = self._pooled(final_map)
        classes = None
        if gallery and self._classifier is not None:
            classes = torch.softmax(self._classifier(final_map).float(), dim=1).cpu().numpy()
        if gallery:
            side = self.recipe.small_view_size
            # Shrunk from the prepared pixels, on the device, and rounded as stored pixels would be.
            small = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True).clamp(0, 255).round()
            vectors = F.normalize(vectors + self.recipe.small_view_weight * self._pooled(self.trunk(
                self._normalised(small))), dim=1)
        local = local_map.flatten(2).transpose(1, 2).to(torch.float16)
        return Descriptors(vectors.cpu().numpy().astype(np.float32, copy=False), local.cpu().numpy(), classes)

    @torch.inference_mode()
    def local_maps_at(self, image: Image.Image, sides: Sequence[int]) -> list[np.ndarray]:
        """The picture's local feature map (``describe``'s ``local``) with the picture squashed to
        ``side`` x ``side`` positions instead of the whole input, for each side: positions x channels,
        float32."""
        if image.mode != "RGB":
            image = image.convert("RGB")  # once, not at every side
        maps = []
        for side in sides:
            array = np.stack([self.prepare(image, size=side * self.backbone.local_stride)])
            x = torch.from_numpy(array).to(self.device).permute(0, 3, 1, 2).float()
            local_map = self._to_local_map(self._normalised(x))
            maps.append(local_map.flatten(2).transpose(1, 2)[0].float().cpu().numpy())
        return maps

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self._mean) / self._std).to(self.dtype).contiguous(memory_format=torch.channels_last)

    def _pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The unit vector GeM-pooled from a feature map (both signs apart, for a signed backbone)."""
        features = features.float()
        pooled = gem(features, self.recipe.gem_p)
        if self.backbone.signed:
            pooled = torch.cat([pooled, gem(-features, self.recipe.gem_p)], dim=1)
        return F.normalize(pooled, dim=1)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A channels x height x width image turned as its EXIF orientation says (as Pillow's
    ``ImageOps.exif_transpose`` does)."""
    turns: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(-1).flip(-2),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-1, -2),
        6: lambda x: torch.rot90(x, k=-1, dims=(-2, -1)),
        7: lambda x: x.transpose(-1, -2).flip(-1).flip(-2),
        8: lambda x: torch.rot90(x, k=1, dims=(-2, -1)),
    }
    return turns[orientation](image).contiguous() if orientation in turns else image


def encode_jpegs(images: Sequence[torch.Tensor], *, max_side: int, quality: int) -> list[bytes]:
    """JPEG files of decoded images no larger than ``max_side``, shrunk and encoded where the
    images lie (on a GPU, by nvjpeg): no metadata, nothing but the pixels."""
    from torchvision.io import encode_jpeg

    if not images:
        return []
    shrunk = []
    for image in images:
        height, width = image.shape[-2:]
        scale = min(1.0, max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
            image = image.clamp(0, 255).round().to(torch.uint8)
        shrunk.append(image.contiguous())
    return [bytes(encoded.cpu().numpy()) for encoded in encode_jpeg(shrunk, quality=quality)]


_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")


def install_weights(name: str, source: Path, weights_dir: Path, *, ignore_checksum: bool = False) -> Path:
    """Put a downloaded torchvision checkpoint where ``Embedder`` looks for it.

    The file must be the one torchvision publishes: its SHA-256 must start with the hash in the
    published file name (unless ``ignore_checksum``), and it must load into the architecture.
    """
    tv = get_backbone(name).torchvision
    if tv is None:
        raise WeightsRejected(f"{name} ships with the application and needs no weights file.")
    if not source.is_file():
        raise WeightsRejected(f"{source} is not a file.")
    target = tv.checkpoint_path(weights_dir)
    expected = _HASH_PREFIX.search(target.name)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if expected and not digest.startswith(expected.group(1)) and not ignore_checksum:
        raise WeightsRejected(
            f"{source} is not {target.name}: its SHA-256 starts with {digest[:len(expected.group(1))]}, "
            f"not {expected.group(1)}. Download {tv.url} again, or pass --ignore-checksum to "
            "install a re-saved copy of the same weights."
        )
    try:
        model = getattr(models, tv.architecture)(weights=None)
        model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise WeightsRejected(f"{source} does not hold {name} weights: {exc}") from exc
    weights_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=weights_dir, delete=False, suffix=".partial") as tmp:
        with source.open("rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, target)
    return target
