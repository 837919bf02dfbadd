"""Inception-v4 and Inception-ResNet-v2 are timm's, key for key: its weights load and give the
same outputs. Our own code: timm is only the reference here (``pip install timm``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models import create_model

timm = pytest.importorskip("timm")

# name -> timm's parameter count (1000 classes).
PARAMS = {"inception_v4": 42_679_816, "inception_resnet_v2": 55_843_464}
SMALLEST = 75  # the unpadded stem and two grid reductions leave a 1 x 1 map


def _randomise_batchnorm(model: nn.Module) -> None:
    """Fresh BN layers are the identity; random statistics make parity mean something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_count_matches_timm(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name)
        theirs = timm.create_model(name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs) == PARAMS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", PARAMS)
def test_timm_state_dict_loads_and_outputs_match(name: str) -> None:
    reference = timm.create_model(name).eval()
    _randomise_batchnorm(reference)
    ours = create_model(name).eval()
    theirs_sd, ours_sd = reference.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)  # same keys, in the same order
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}

    ours.load_state_dict(theirs_sd, strict=True)
    x = torch.randn(2, 3, SMALLEST, SMALLEST)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
        assert ours.forward_features(x).shape == reference.forward_features(x).shape
    assert diff <= 1e-5, f"max abs diff {diff:.2e}"


@pytest.mark.sweep
@pytest.mark.parametrize("name", PARAMS)
def test_timm_outputs_match_at_299(name: str) -> None:
    reference = timm.create_model(name).eval()
    _randomise_batchnorm(reference)
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs diff {diff:.2e}"


@pytest.mark.parametrize("name", PARAMS)
def test_feature_info_matches_timm(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name)
        theirs = timm.create_model(name)
    assert [(f.module, f.num_chs, f.reduction) for f in ours.feature_info] == [
        (f["module"], f["num_chs"], f["reduction"]) for f in theirs.feature_info
    ]
