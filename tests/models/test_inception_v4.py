"""Inception-v4 and Inception-ResNet-v2 specifics: block widths, the scaled residuals, the
small-image stem, transform_input. Parity with timm is in test_timm_parity.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models import create_model
from moderncnn.models.inception_resnet_v2 import (
    InceptionResNetA,
    InceptionResNetB,
    InceptionResNetC,
    InceptionResNetV2,
)
from moderncnn.models.inception_v4 import (
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionV4,
    ReductionA,
    ReductionB,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("block", "in_chs", "side", "out_chs", "out_side"),
    [
        (lambda c: InceptionA(c), 384, 9, 384, 9),
        (lambda c: ReductionA(c, 192, 224, 256, 384), 384, 9, 1024, 4),
        (lambda c: InceptionB(c), 1024, 5, 1024, 5),
        (lambda c: ReductionB(c), 1024, 5, 1536, 2),
        (lambda c: InceptionC(c), 1536, 3, 1536, 3),
    ],
    ids=["inception_a", "reduction_a", "inception_b", "reduction_b", "inception_c"],
)
def test_inception_v4_blocks_widths_and_grids(block, in_chs, side, out_chs, out_side) -> None:
    unit = block(in_chs).eval()
    assert unit.out_chs == out_chs
    with torch.no_grad():
        out = unit(torch.randn(1, in_chs, side, side))
    assert out.shape == (1, out_chs, out_side, out_side)


@pytest.mark.parametrize(
    ("block", "chs", "scale"),
    [(InceptionResNetA, 320, 0.17), (InceptionResNetB, 1088, 0.10), (InceptionResNetC, 2080, 0.2)],
)
def test_residual_blocks_add_the_scaled_branch_to_the_input(block, chs: int, scale: float) -> None:
    unit = block(chs, scale, width_multiplier=0.25).eval()
    assert unit.conv2d.bias is not None and unit.conv2d.out_channels == chs  # back to the trunk
    x = torch.randn(2, chs, 5, 5)
    with torch.no_grad():
        branches = [unit.branch0(x), unit.branch1(x)]
        if hasattr(unit, "branch2"):
            branches.append(unit.branch2(x))
        residual = unit.conv2d(torch.cat(branches, 1))
        torch.testing.assert_close(unit(x), torch.relu(x + scale * residual))
        nn.init.zeros_(unit.conv2d.weight)
        nn.init.zeros_(unit.conv2d.bias)
        torch.testing.assert_close(unit(x), torch.relu(x))  # a zero branch: the identity


def test_last_block_is_unscaled_without_relu() -> None:
    model = create_model("inception_resnet_v2_cifar", width_multiplier=0.125)
    assert model.block8.scale == 1.0 and isinstance(model.block8.act, nn.Identity)
    assert len(model.repeat) == 10 and len(model.repeat_1) == 20 and len(model.repeat_2) == 9
    assert [b.scale for b in (model.repeat[0], model.repeat_1[0], model.repeat_2[0])] == [
        0.17,
        0.10,
        0.20,
    ]


def test_inception_v4_layout_follows_the_paper() -> None:
    model = create_model("inception_v4_cifar", width_multiplier=0.125)
    kinds = [type(m).__name__ for m in model.features]
    blocks = ["InceptionA"] * 4 + ["ReductionA"] + ["InceptionB"] * 7 + ["ReductionB"]
    assert kinds[6:] == blocks + ["InceptionC"] * 3


@pytest.mark.parametrize(
    ("cls", "second"),
    [(InceptionV4, 73), (InceptionResNetV2, 71)],  # features.3 / conv2d_4a
)
def test_imagenet_stem_maps_299_to_35_and_small_stem_keeps_32(cls, second: int) -> None:
    big = cls(num_classes=0, width_multiplier=0.125).eval()
    small = cls(num_classes=0, width_multiplier=0.125, stem="cifar").eval()
    with torch.no_grad():
        maps = big.forward_intermediates(torch.randn(1, 3, 299, 299))
        small_maps = small.forward_intermediates(torch.randn(1, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [147, second, 35, 17, 8]
    assert [m.shape[-1] for m in small_maps] == [32, 32, 32, 15, 7]
    assert big.min_input_size == (3, 75, 75) and small.min_input_size == (3, 7, 7)


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_min_input_size_is_the_smallest_that_runs(name: str) -> None:
    for stem in ("imagenet", "cifar"):
        model = create_model(name, num_classes=3, stem=stem, width_multiplier=0.125).eval()
        c, h, w = model.min_input_size
        with torch.no_grad():
            assert model(torch.randn(1, c, h, w)).shape == (1, 3)
            with pytest.raises(RuntimeError):
                model(torch.randn(1, c, h - 1, w - 1))


@pytest.mark.parametrize("name", ["inception_v4_cifar", "inception_resnet_v2_cifar"])
def test_transform_input_applies_the_imagenet_to_half_range_formula(name: str) -> None:
    plain = create_model(name, num_classes=5, width_multiplier=0.125).eval()
    transformed = create_model(name, num_classes=5, width_multiplier=0.125, transform_input=True)
    transformed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    manual = torch.stack([(x[:, c] * STD[c] + MEAN[c] - 0.5) / 0.5 for c in range(3)], 1)
    with torch.no_grad():
        torch.testing.assert_close(transformed.eval()(x), plain(manual), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="in_chans=1"):
        create_model(name, in_chans=1, transform_input=True)


def test_drop_rate_adds_dropout_before_the_classifier() -> None:
    assert create_model("inception_v4_cifar", width_multiplier=0.125).dropout is None
    model = create_model("inception_resnet_v2_cifar", width_multiplier=0.125, drop_rate=0.2)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.2
