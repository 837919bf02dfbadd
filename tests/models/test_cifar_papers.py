"""The papers' CIFAR networks: published parameter counts, plain vs residual units, option A vs
B shortcuts, the DenseNet-40 layer without bottleneck, and summary / the CLI on one of them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.cli import main as cli_main
from moderncnn.models import cifar_resnet, densenet_cifar
from moderncnn.models.cifar_resnet import CifarBasicBlock, ZeroPadShortcut
from moderncnn.models.densenet import DenseLayer
from moderncnn.models.layer_table import summary

# Exact counts at 10 classes (stated in the modules' docstrings) and the papers' rounded ones:
# He et al. 2016 Table 6 and Identity Mappings Table 2 ("1.7M"), Huang et al. 2017 Table 2.
PARAMS = {
    "resnet20": (269_722, "0.27M"),
    "resnet32": (464_154, "0.46M"),
    "resnet44": (658_586, "0.66M"),
    "resnet56": (853_018, "0.85M"),
    "resnet110": (1_727_962, "1.7M"),
    "resnet1202": (19_421_274, "19.4M"),
    "preact_resnet110": (1_730_522, "1.7M"),
    "preact_resnet164": (1_703_258, "1.7M"),
    "densenet40": (1_019_754, "1.0M"),
    "densenet_bc_100": (769_210, "0.8M"),
}


def count(name: str, **kwargs) -> int:
    with torch.device("meta"):  # no memory, no initialisation: ResNet-1202 is free to count
        return sum(p.numel() for p in create_model(name, num_classes=10, **kwargs).parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_are_the_published_ones(name: str) -> None:
    exact, published = PARAMS[name]
    assert count(name) == exact
    # The papers' figure is the count rounded to as many decimals as it shows.
    decimals = len(published.removesuffix("M").partition(".")[2])
    assert f"{exact / 1e6:.{decimals}f}M" == published
    module = densenet_cifar if name.startswith("densenet") else cifar_resnet
    assert f"{exact:,}" in module.__doc__


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_networks_have_the_resnets_weights_and_no_shortcut(depth: int) -> None:
    assert count(f"plain{depth}") == count(f"resnet{depth}")  # option A adds no parameter
    with torch.device("meta"):
        plain = create_model(f"plain{depth}", num_classes=10)
    units = [m for m in plain.modules() if isinstance(m, CifarBasicBlock)]
    assert len(units) == 3 * (depth - 2) // 6
    assert not any(u.residual or u.downsample is not None for u in units)


def test_same_weights_plain_and_residual_differ_by_the_shortcuts_only() -> None:
    torch.manual_seed(0)
    resnet = create_model("resnet20", num_classes=10).eval()
    plain = create_model("plain20", num_classes=10).eval()
    plain.load_state_dict(resnet.state_dict())  # the same keys: one set of weights for both
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), resnet(x), atol=1e-3)
        unit = resnet.layer2[1]  # identity shortcut: out = relu(F(x) + x)
        plain_unit = plain.layer2[1]
        h = torch.randn(2, 32, 16, 16)
        residual = unit.bn2(unit.conv2(unit.relu(unit.bn1(unit.conv1(h)))))
        torch.testing.assert_close(unit(h), torch.relu(residual + h))
        torch.testing.assert_close(plain_unit(h), torch.relu(residual))


def test_a_residual_unit_with_a_zero_branch_passes_its_input_on() -> None:
    """F(x) = 0 makes a residual unit relu(x) (the identity on its non-negative input), and a
    plain unit zero: what lets a deeper residual net be no worse than a shallower one."""
    residual, plain = CifarBasicBlock(16, 16), CifarBasicBlock(16, 16, shortcut="none")
    x = torch.rand(2, 16, 8, 8)  # after a ReLU: non-negative
    for unit in (residual, plain):
        nn.init.zeros_(unit.bn2.weight)
        unit.eval()
    with torch.no_grad():
        assert torch.equal(residual(x), x)
        assert torch.equal(plain(x), torch.zeros_like(x))


def test_option_a_zero_pads_and_option_b_projects() -> None:
    x = torch.randn(2, 16, 8, 8)
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4) and not list(shortcut.parameters())
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))

    a, b = create_model("resnet20", num_classes=10), create_model("resnet20", shortcut="B")
    assert isinstance(a.layer2[0].downsample, ZeroPadShortcut) and a.layer2[1].downsample is None
    projection = b.layer2[0].downsample
    assert isinstance(projection[0], nn.Conv2d) and projection[0].stride == (2, 2)
    assert b.layer1[0].downsample is None  # option B projects only where the shape changes
    # Two strided 1x1 convs with BN: 16 -> 32 and 32 -> 64 channels.
    assert count("resnet20", shortcut="B") - count("resnet20") == (16 + 2) * 32 + (32 + 2) * 64
    with pytest.raises(ValueError, match="shortcut must be 'A', 'B' or 'none', got 'C'"):
        create_model("resnet20", shortcut="C")


def test_stages_are_the_papers_16_32_64_channels_at_32_16_8_pixels() -> None:
    model = create_model("resnet56", num_classes=10, in_chans=1).eval()
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(16, 1), (32, 2), (64, 4)]
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 1, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [9, 9, 9]
    with torch.device("meta"):
        preact164 = create_model("preact_resnet164", num_classes=10)
    assert [f.num_chs for f in preact164.feature_info] == [64, 128, 256]  # bottleneck x 4


def test_densenet40_layers_have_no_bottleneck_and_its_transitions_keep_every_channel() -> None:
    with torch.device("meta"):
        d40 = create_model("densenet40", num_classes=10)
        bc100 = create_model("densenet_bc_100", num_classes=10)
    layer = d40.features.denseblock1.denselayer1
    assert not hasattr(layer, "conv1") and layer.conv2.in_channels == 16
    assert d40.features.transition1.conv.out_channels == 16 + 12 * 12  # compression 1
    assert [f.num_chs for f in d40.feature_info] == [160, 304, 448]
    bc_layer = bc100.features.denseblock1.denselayer1
    assert bc_layer.conv1.out_channels == 48 and bc_layer.conv2.in_channels == 48  # 4k
    assert [f.num_chs for f in bc100.feature_info] == [216, 300, 342]  # 216 -> 108 -> ...
    with pytest.raises(ValueError, match="memory_efficient needs a bottleneck"):
        DenseLayer(16, 12, bn_size=0, memory_efficient=True)


def test_densenet40_layer_is_bn_relu_conv3x3_of_the_concatenation() -> None:
    layer = DenseLayer(8, 4, bn_size=0).eval()
    a, b = torch.randn(1, 5, 6, 6), torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        expected = layer.conv2(torch.relu(layer.norm2(torch.cat([a, b], 1))))
        torch.testing.assert_close(layer([a, b]), expected)


def test_summary_counts_resnet20_by_hand() -> None:
    with torch.device("meta"):
        result = summary(create_model("resnet20", num_classes=10), input_size=(3, 32, 32))
    # conv MACs: output pixels x out channels x (3 x 3 x in channels), per stage; then the fc.
    stem = 32 * 32 * 16 * 27
    stage1 = 6 * 32 * 32 * 16 * 144
    stage2 = 16 * 16 * 32 * (144 + 5 * 288)
    stage3 = 8 * 8 * 64 * (288 + 5 * 576)
    assert result.macs == stem + stage1 + stage2 + stage3 + 64 * 10  # 40.55M
    assert result.total_params == 269_722


@pytest.mark.slow
def test_summary_command_on_fashion_mnist_sized_input(capsys) -> None:
    argv = ["summary", "--arch", "plain20", "--in_chans", "1", "--input_size", "1", "28", "28"]
    assert cli_main([*argv, "--num_classes", "10", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "CifarResNet: input 1 x 1 x 28 x 28" in out
    assert "layer3  1 x 64 x 7 x 7    /4" in out and "269,434" in out  # 1-channel stem: 269,722
