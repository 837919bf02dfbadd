"""Pre-activation ResNet: BN-ReLU before every conv, clean identity shortcuts, stated counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models import create_model
from moderncnn.models.preact_resnet import PreActBasicBlock, PreActBottleneck

# The parameter counts stated in moderncnn/models/preact_resnet.py (1000 and 10 classes).
PARAMS = {
    "preact_resnet18": (11_687_720, 11_179_850),
    "preact_resnet34": (21_795_880, 21_288_010),
    "preact_resnet50": (25_549_352, 23_520_842),
    "preact_resnet18_cifar": (11_680_040, 11_172_170),
    "preact_resnet34_cifar": (21_788_200, 21_280_330),
    "preact_resnet50_cifar": (25_541_672, 23_513_162),
}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_are_the_documented_ones(name: str) -> None:
    with torch.device("meta"):
        counts = tuple(
            sum(p.numel() for p in create_model(name, num_classes=k).parameters())
            for k in (1000, 10)
        )
    assert counts == PARAMS[name]
    import moderncnn.models.preact_resnet as module

    assert f"{counts[0]:,}" in module.__doc__ and f"{counts[1]:,}" in module.__doc__


@pytest.mark.parametrize("block", [PreActBasicBlock, PreActBottleneck])
def test_identity_shortcut_is_clean(block) -> None:
    """With the residual branch's last conv at zero a unit is exactly the identity: no BN or
    ReLU acts on the shortcut (paper Fig. 1b), unlike the original unit's relu(x + F(x))."""
    unit = block(16 * block.expansion, 16).eval()
    assert unit.downsample is None
    last = unit.conv3 if block is PreActBottleneck else unit.conv2
    nn.init.zeros_(last.weight)
    x = torch.randn(2, 16 * block.expansion, 6, 6)  # negative values too: no ReLU may touch x
    with torch.no_grad():
        assert torch.equal(unit(x), x)


@pytest.mark.parametrize("block", [PreActBasicBlock, PreActBottleneck])
def test_projection_takes_the_preactivated_input(block) -> None:
    unit = block(8, 16, stride=2).eval()
    assert isinstance(unit.downsample, nn.Conv2d) and unit.downsample.stride == (2, 2)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        out = unit(x)
        last = unit.conv3 if block is PreActBottleneck else unit.conv2
        nn.init.zeros_(last.weight)
        shortcut = unit.downsample(torch.relu(unit.bn1(x)))
        torch.testing.assert_close(unit(x), shortcut)
    assert out.shape == (2, 16 * block.expansion, 4, 4)


def test_every_conv_but_the_stem_follows_a_batch_norm_and_relu() -> None:
    model = create_model("preact_resnet50_cifar", num_classes=10, channels=(8, 16, 32, 64))
    units = [m for m in model.modules() if isinstance(m, PreActBottleneck)]
    for unit in units:
        for i in (1, 2, 3):
            bn, conv = getattr(unit, f"bn{i}"), getattr(unit, f"conv{i}")
            assert bn.num_features == conv.in_channels
    assert not any(isinstance(m, nn.BatchNorm2d) for m in (model.conv1, model.maxpool))
    assert model.norm.num_features == model.num_features == 256


def test_small_image_variant_for_28px_and_final_bn_relu() -> None:
    model = create_model("preact_resnet18_cifar", num_classes=10, in_chans=1).eval()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 1, 28, 28))
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert features.shape == (2, 512, 4, 4) and features.min() >= 0  # after the final ReLU
    assert [f.reduction for f in model.feature_info] == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(layers=(1, 1, 1)), r"one entry per stage"),
        (dict(stem="tiny"), r"stem must be 'imagenet' or 'cifar', got 'tiny'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("preact_resnet18", **kwargs)
