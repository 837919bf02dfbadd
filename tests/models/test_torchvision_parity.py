"""Our models are torchvision's, key for key: its checkpoints load and give the same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from moderncnn.models import create_model

# name -> (torchvision builder kwargs, published parameter count, parity input size)
# googlenet's published count is without its auxiliary heads; inception_v3's is with its one.
# Parity runs at the smallest input the model takes (32 px: a 1 x 1 map after the last stage).
PARITY = {
    "resnet18": ({}, 11_689_512, 64),
    "resnet34": ({}, 21_797_672, 64),
    "resnet50": ({}, 25_557_032, 64),
    "resnet101": ({}, 44_549_160, 64),
    "resnet152": ({}, 60_192_808, 64),
    "densenet121": ({}, 7_978_856, 64),
    "densenet161": ({}, 28_681_000, 64),
    "densenet169": ({}, 14_149_480, 64),
    "densenet201": ({}, 20_013_928, 64),
    "googlenet": ({"aux_logits": True, "init_weights": True}, 6_624_904, 64),
    "inception_v3": ({"aux_logits": True, "init_weights": True}, 27_161_264, 96),
    "resnext50_32x4d": ({}, 25_028_904, 32),
    "resnext101_32x8d": ({}, 88_791_336, 32),
    "resnext101_64x4d": ({}, 83_455_272, 32),
    "wide_resnet50_2": ({}, 68_883_240, 32),
    "wide_resnet101_2": ({}, 126_886_696, 32),
}
# Over 80M parameters: two copies take seconds to build on 2 cores; the same code as
# resnext50_32x4d and wide_resnet50_2, which always run.
LARGE = ("resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_batchnorm(model: nn.Module) -> None:
    """Fresh BN layers are the identity; random statistics make parity mean something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)


@pytest.mark.parametrize("name", PARITY)
def test_parameter_count_matches_published(name: str) -> None:
    _, published, _ = PARITY[name]
    kwargs = {"aux_logits": False} if name == "googlenet" else {}
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    assert _count(model) == published


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.sweep) if n in LARGE else n for n in PARITY]
)
def test_torchvision_checkpoint_loads_and_outputs_match(name: str) -> None:
    tv_kwargs, _, size = PARITY[name]
    reference = getattr(torchvision.models, name)(**tv_kwargs).eval()
    _randomise_batchnorm(reference)
    ours = create_model(name).eval()

    theirs_sd, ours_sd = reference.state_dict(), ours.state_dict()
    assert sorted(ours_sd) == sorted(theirs_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}

    ours.load_state_dict(theirs_sd, strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs diff {diff:.2e}"
