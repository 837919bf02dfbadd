"""ResNet-specific behaviour: shortcuts, custom widths and depths, stems, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from moderncnn.models import create_model
from moderncnn.models.resnet import BasicBlock, Bottleneck, ResNet

TINY = dict(channels=(8, 16, 32, 64))  # the real depths, a fraction of the width


@pytest.mark.parametrize(
    ("block", "in_chs", "width", "stride", "projected"),
    [
        (BasicBlock, 16, 16, 1, False),
        (BasicBlock, 16, 16, 2, True),  # stride changes
        (BasicBlock, 16, 32, 1, True),  # width changes
        (Bottleneck, 64, 16, 1, False),  # 16 * 4 == 64: same shape
        (Bottleneck, 16, 16, 1, True),  # 16 -> 64 channels
        (Bottleneck, 64, 16, 2, True),
    ],
)
def test_projection_shortcut_exactly_when_shape_changes(
    block: type[nn.Module], in_chs: int, width: int, stride: int, projected: bool
) -> None:
    unit = block(in_chs, width, stride).eval()
    assert (unit.downsample is not None) == projected
    x = torch.randn(2, in_chs, 8, 8)
    with torch.no_grad():
        out = unit(x)
    assert out.shape == (2, width * block.expansion, 8 // stride, 8 // stride)
    if projected:
        conv, bn = unit.downsample
        assert (conv.kernel_size, conv.stride) == ((1, 1), (stride, stride))
        assert isinstance(bn, nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("name", "projected"),
    [
        ("resnet18", {"layer2.0", "layer3.0", "layer4.0"}),  # 64 -> 64 needs none in layer1
        ("resnet50", {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}),  # 64 -> 256 does
    ],
)
def test_only_the_first_unit_of_a_stage_projects(name: str, projected: set[str]) -> None:
    model = create_model(name, **TINY)
    found = {n for n, m in model.named_modules() if getattr(m, "downsample", None) is not None}
    assert found == projected


def test_bottleneck_downsamples_in_its_3x3_like_resnet_v1_5() -> None:
    unit = Bottleneck(64, 32, stride=2)
    assert unit.conv1.stride == (1, 1) and unit.conv2.stride == (2, 2)
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in unit.modules())


def test_custom_channels_and_layers_from_an_entry_point() -> None:
    model = create_model(
        "resnet18_cifar", num_classes=10, in_chans=1, channels=(16, 32, 64), layers=(1, 1, 1)
    ).eval()
    assert model.num_features == 64
    assert [(f.module, f.num_chs, f.reduction) for f in model.feature_info] == [
        ("layer1", 16, 1),
        ("layer2", 32, 2),
        ("layer3", 64, 4),
    ]
    assert not hasattr(model, "layer4")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bottleneck_widths_expand_four_times() -> None:
    model = create_model("resnet50", num_classes=0, channels=(8, 16), layers=(1, 2))
    assert model.num_features == 64
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(32, 4), (64, 8)]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 64)


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_cifar_variant_one_channel_28px_and_stage_strides(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1, **TINY).eval()
    assert isinstance(model.maxpool, nn.Identity)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert model.input_size == (1, 32, 32)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert model(x).shape == (2, 10)
    assert [f.reduction for f in model.feature_info] == [1, 2, 4, 8]
    for info, fmap in zip(model.feature_info, maps, strict=True):
        side = math.ceil(28 / info.reduction)  # padded stride-2 convs round up: 28, 14, 7, 4
        assert fmap.shape == (2, info.num_chs, side, side), info


def test_one_channel_imagenet_model() -> None:
    model = create_model("resnet18", num_classes=5, in_chans=1, **TINY).eval()
    assert model.conv1.weight.shape == (8, 1, 7, 7)
    assert model.input_size == (1, 224, 224) and model.min_input_size == (1, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 1, 64, 64))
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]


@pytest.mark.parametrize(
    ("name", "kwargs", "side"),
    [
        ("resnet18", TINY, 32),
        ("resnet18_cifar", TINY, 8),
        ("resnet18_cifar", dict(channels=(8, 16, 32), layers=(1, 1, 1)), 4),
    ],
)
def test_min_input_size_is_the_total_stride_and_trains(name: str, kwargs: dict, side: int) -> None:
    model = create_model(name, num_classes=3, **kwargs).train()
    assert model.min_input_size == (3, side, side)
    x = torch.randn(2, *model.min_input_size)
    model(x).sum().backward()
    with torch.no_grad():
        assert model.eval().forward_features(x).shape[-2:] == (1, 1)


def test_zero_init_residual_makes_every_unit_start_as_its_shortcut() -> None:
    model = create_model("resnet50_cifar", zero_init_residual=True, **TINY).eval()
    assert all(torch.all(m.bn3.weight == 0) for m in model.modules() if isinstance(m, Bottleneck))
    unit = model.layer2[0]
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert torch.equal(unit(x), torch.relu(unit.downsample(x)))
        y = torch.relu(torch.randn(2, 64, 4, 4))
        assert torch.equal(model.layer2[1](y), y)  # identity shortcut: relu(0 + y) == y

    basic = create_model("resnet18", zero_init_residual=True, **TINY)
    assert all(torch.all(m.bn2.weight == 0) for m in basic.modules() if isinstance(m, BasicBlock))


def test_init_follows_torchvision() -> None:
    model = create_model("resnet18", **TINY)
    conv = model.layer3[0].conv1  # fan_out = 32 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_drop_rate_adds_dropout_before_the_classifier() -> None:
    assert create_model("resnet18", **TINY).dropout is None
    model = create_model("resnet18", drop_rate=0.3, **TINY)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.3


def test_kwargs_override_what_the_entry_point_fixes() -> None:
    model = create_model("resnet18_cifar", stem="imagenet", block=Bottleneck, **TINY)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.layer1[0], Bottleneck)


def test_grouped_bottleneck_matches_torchvision_resnext() -> None:
    reference = torchvision.models.resnext50_32x4d().eval()
    model = create_model("resnet50", groups=32, width_per_group=4).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(layers=(1, 1, 1)), r"one entry per stage.*layers=\[1, 1, 1\]"),
        (dict(layers=(2, 0, 2, 2)), r">= 1 unit.*layers=\[2, 0, 2, 2\]"),
        (dict(stem="tiny"), r"stem must be 'imagenet' or 'cifar', got 'tiny'"),
        (dict(groups=32), r"BasicBlock.*groups=32"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("resnet18", **kwargs)


def test_resnet_class_takes_any_number_of_stages() -> None:
    model = ResNet(BasicBlock, layers=(1,) * 5, channels=(4, 8, 16, 32, 64), num_classes=2)
    assert [f.reduction for f in model.feature_info] == [4, 8, 16, 32, 64]
    assert model.min_input_size == (3, 64, 64)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)
