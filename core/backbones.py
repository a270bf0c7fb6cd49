"""The backbones the site can embed with, and what each one's descriptors are. Free of Django
and of torch, so that a process that never embeds (the index writer, the import command, a web
process until its first search with a picture) knows every identity without loading torch.
``core.embedding`` loads the models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.identity import IndexIdentity

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-Lite EfficientNets were trained on inputs scaled to [-1, 1].
UNIT_RANGE_MEAN = (0.5, 0.5, 0.5)
UNIT_RANGE_STD = (0.5, 0.5, 0.5)


class WeightsMissing(RuntimeError):
    """The backbone's weights are not on disk and cannot be downloaded here."""


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision architecture with its published ImageNet weights, and the part we keep."""

    architecture: str  # the builder in torchvision.models
    weights: str  # the weights' name for torchvision.models.get_weight
    url: str  # where torchvision publishes them; the file name carries the start of their SHA-256
    trunk: str  # "children": all but the pooling and the classifier; "features": the ``features`` module

    def checkpoint_path(self, weights_dir: Path) -> Path:
        return weights_dir / os.path.basename(self.url)


@dataclass(frozen=True)
class Backbone:
    name: str
    channels: int
    weights_tag: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # None for a backbone whose weights ship with the application.
    torchvision: TorchvisionWeights | None = None
    # Pool the negative part too: for a feature map without a ReLU, it carries half the signal.
    signed: bool = False
    # The feature map that core.rerank compares position by position: the output of the
    # trunk's first ``local_depth`` modules, ``local_stride`` input pixels per position and
    # ``local_channels`` deep; None: the last map, the one the vector is pooled from.
    local_depth: int | None = None
    local_stride: int = 32
    local_channels: int | None = None

    @property
    def dim(self) -> int:
        return self.channels * (2 if self.signed else 1)

    @property
    def local_width(self) -> int:
        return self.local_channels or self.channels

    @property
    def local_tag(self) -> str:
        return f"@{self.local_depth}" if self.local_depth is not None else ""


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        # The last block's 320 channels; positions of the stride-16 map (the stem and 11 blocks, 112
        # channels, 14 x 14 at 224 pixels) tell one photo from another of the same kind of subject
        # much better than the 7 x 7 of the last block (docs/benchmarks.md). core.efficientnet_lite
        # derives the same numbers from its layout, and a test holds them equal.
        Backbone("efficientnet_lite0", 320, "lukemelas-57934424:last-block", UNIT_RANGE_MEAN, UNIT_RANGE_STD,
                 signed=True, local_depth=12, local_stride=16, local_channels=112),
        Backbone("resnet50", 2048, "IMAGENET1K_V2", IMAGENET_MEAN, IMAGENET_STD,
                 TorchvisionWeights("resnet50", "ResNet50_Weights.IMAGENET1K_V2",
                                    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "children")),
        Backbone("efficientnet_b0", 1280, "IMAGENET1K_V1", IMAGENET_MEAN, IMAGENET_STD,
                 TorchvisionWeights("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1",
                                    "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
                                    "features")),
        Backbone("mobilenet_v3_large", 960, "IMAGENET1K_V2", IMAGENET_MEAN, IMAGENET_STD,
                 TorchvisionWeights("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
                                    "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
                                    "features")),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}.") from None


@dataclass(frozen=True)
class Recipe:
    """How an image becomes a descriptor. Changing any field changes the descriptor's identity.

    A gallery image's vector (what the index holds) is its own vector blended with the vector
    of a ``small_view_size``-pixel copy of it, weighted ``small_view_weight``, then normalised;
    a query's is its own alone. A blurred or downscaled copy has lost the fine detail that the
    full-size vector of its original carries, and the small view gives the original what the
    copy kept: on the copy-detection benchmark it found more originals first and among the best
    100 candidates, while blending the query's own small view too found fewer (docs/benchmarks.md).
    """

    input_size: int = 224
    gem_p: float = 3.0
    small_view_size: int = 96
    small_view_weight: float = 0.5

    @property
    def tag(self) -> str:
        # "+local": every vector is stored with its feature map for re-ranking (core.rerank);
        # vectors stored without one are embedded again.
        return (f"square{self.input_size}-gem{self.gem_p:g}"
                f"-small{self.small_view_size}x{self.small_view_weight:g}+local")


DEFAULT_RECIPE = Recipe()


def descriptor_identity(backbone: Backbone, recipe: Recipe = DEFAULT_RECIPE) -> IndexIdentity:
    """What an ``Embedder`` with these settings produces, known without loading the model."""
    return IndexIdentity(backbone.name, f"{backbone.weights_tag}+{recipe.tag}{backbone.local_tag}", backbone.dim)
