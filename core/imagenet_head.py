"""The default backbone's own ImageNet classifier, run on the feature maps stored with each vector.
Free of Django; loads torch (only processes that embed do).

Each image's stored map (``Embedding.local_features``) is the output of the trunk's first
``Backbone.local_depth`` modules, so the classifier runs the rest of the network from there:
nothing is decoded or embedded again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from core import efficientnet_lite
from core.backbones import Backbone


class HeadUnavailable(ValueError):
    """The backbone has no classifier that this code can run from its stored maps."""


class ImagenetHead:
    def __init__(self, backbone: Backbone, weights: Path | None = None) -> None:
        if backbone.torchvision is not None or backbone.local_depth is None:
            raise HeadUnavailable(f"{backbone.name} has no ImageNet classifier to suggest words with; "
                                  "only efficientnet_lite0 does.")
        model = efficientnet_lite.efficientnet_lite0(weights)
        self.backbone = backbone
        self._rest = nn.Sequential(*list(model.features)[backbone.local_depth:]).eval()
        self._classifier = model.classifier.eval()

    @torch.inference_mode()
    def probabilities(self, local_maps: np.ndarray) -> np.ndarray:
        """Images x 1,000 class probabilities from images x positions x channels stored maps."""
        count, positions, channels = local_maps.shape
        if channels != self.backbone.local_width:
            raise HeadUnavailable(f"maps of {channels} channels do not fit {self.backbone.name}")
        side = round(positions ** 0.5)
        x = torch.from_numpy(np.ascontiguousarray(local_maps, dtype=np.float32))
        x = x.reshape(count, side, side, channels).permute(0, 3, 1, 2)
        logits = self._classifier(self._rest(x).mean(dim=(2, 3)))
        return torch.softmax(logits, dim=1).numpy()
