"""The backbone catalogue, which every process reads without loading torch."""
import pytest
from torchvision import models

from core import efficientnet_lite
from core.backbones import BACKBONES, get_backbone


def test_it_describes_efficientnet_lite0_as_its_layout_builds_it():
    backbone = get_backbone("efficientnet_lite0")
    assert backbone.channels == efficientnet_lite.LAST_BLOCK_CHANNELS
    assert backbone.local_depth == efficientnet_lite.STRIDE_16_DEPTH
    assert backbone.local_channels == efficientnet_lite.STRIDE_16_CHANNELS


@pytest.mark.parametrize("name", [name for name, backbone in BACKBONES.items() if backbone.torchvision])
def test_it_names_the_weights_torchvision_publishes(name):
    weights = get_backbone(name).torchvision
    assert weights is not None
    assert models.get_weight(weights.weights).url == weights.url
    assert callable(getattr(models, weights.architecture))
