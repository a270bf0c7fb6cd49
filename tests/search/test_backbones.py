"""The backbone catalogue, which every process reads without loading torch."""
import subprocess
import sys

import pytest
from torchvision import models

from search import efficientnet_lite
from search.backbones import BACKBONES, get_backbone
from tests.conftest import PROJECT_ROOT, process_env

WHAT_A_PROCESS_LOADS = """
import sys

import django

django.setup()
import gallery.services, search.queries, search.runtime, search.selectors, search.services, search.tasks

print(search.runtime.index_identity().describe())
print("torch" in sys.modules)
"""


def test_the_site_starts_and_knows_its_index_without_loading_torch():
    done = subprocess.run([sys.executable, "-c", WHAT_A_PROCESS_LOADS], cwd=PROJECT_ROOT, env=process_env(),
                          capture_output=True, text=True, check=True)
    identity, torch_loaded = done.stdout.split("\n")[:2]
    assert "efficientnet_lite0" in identity
    assert torch_loaded == "False", "the index writer, the import command and a web process start without torch"


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
