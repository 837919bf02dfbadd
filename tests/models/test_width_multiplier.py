"""width_multiplier: every Inception family scales each branch by one rounding rule; 1.0 is
the published network exactly (its parity tests), and a ~1M-parameter model for 28 x 28 images
is one argument away."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models import create_model
from moderncnn.models.layers import scale_width

# family -> (width for ~1M parameters at 10 classes, 1 channel; that count)
INCEPTIONS = {
    "googlenet": (0.3, 913_150),
    "inception_v3": (0.2, 1_022_044),
    "inception_v4": (0.15, 963_410),
    "inception_resnet_v2": (0.125, 952_690),
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_scale_width_rounds_to_multiples_of_8_and_keeps_1_0_exact() -> None:
    assert [scale_width(c, 1.0) for c in (3, 16, 1088)] == [3, 16, 1088]
    assert [scale_width(c, 0.5) for c in (64, 96, 48, 16, 1088)] == [32, 48, 24, 8, 544]
    assert scale_width(16, 0.1) == 8  # never below one multiple of 8
    assert scale_width(192, 0.15) == 32  # 28.8 -> the nearest multiple of 8
    assert scale_width(64, 2.0) == 128


@pytest.mark.parametrize("family", INCEPTIONS)
def test_default_width_is_the_published_network(family: str) -> None:
    with torch.device("meta"):
        default = create_model(family)
        explicit = create_model(family, width_multiplier=1.0)
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert {k: v.shape for k, v in explicit.state_dict().items()} == shapes


@pytest.mark.parametrize("family", INCEPTIONS)
def test_every_convolution_is_scaled_by_the_same_rule(family: str) -> None:
    with torch.device("meta"):
        full = create_model(f"{family}_cifar", num_classes=10)
        half = create_model(f"{family}_cifar", num_classes=10, width_multiplier=0.5)
    full_convs = [m for m in full.modules() if isinstance(m, nn.Conv2d)]
    half_convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert len(full_convs) == len(half_convs)
    for a, b in zip(full_convs, half_convs, strict=True):
        assert b.out_channels == scale_width(a.out_channels, 0.5)
    assert half.num_features == scale_width(full.num_features, 0.5)
    assert 0.2 < _count(half) / _count(full) < 0.3  # parameters scale about as width^2


@pytest.mark.parametrize("family", INCEPTIONS)
def test_a_one_million_parameter_inception_for_28px_trains(family: str) -> None:
    width, count = INCEPTIONS[family]
    model = create_model(f"{family}_cifar", num_classes=10, in_chans=1, width_multiplier=width)
    assert _count(model) == count  # the figure in the class docstring
    out = model.train()(torch.randn(2, 1, 28, 28))
    logits = out if isinstance(out, torch.Tensor) else out[0]
    assert logits.shape == (2, 10)
    sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), "half"])
def test_bad_width_multiplier_names_the_value(bad) -> None:
    with pytest.raises(ValueError, match="width_multiplier must be a number > 0"):
        create_model("googlenet_cifar", width_multiplier=bad)
