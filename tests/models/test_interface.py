"""The shared model interface, checked for every registered model (a new one is tested free)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moderncnn.models import (
    ClassifierModel,
    UnknownModelError,
    create_model,
    list_models,
    register_model,
)

ALL_MODELS = list_models()
# Deeper variants run the same code as resnet18/50 and densenet121 with more units: they are
# checked in the full sweep (`pytest -m sweep`); parameter counts and parity cover them always.
DEEP = ("resnet101", "resnet152", "densenet161", "densenet169", "densenet201")


def _marked(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.sweep) if n.startswith(DEEP) else n for n in names]


MODELS = _marked(ALL_MODELS)
AUX_MODELS = [n for n in ALL_MODELS if n.startswith(("googlenet", "inception"))]
NUM_CLASSES = 7


def _build(name: str, **kwargs) -> ClassifierModel:
    return create_model(name, num_classes=NUM_CLASSES, **kwargs)


def _input(model: ClassifierModel, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.min_input_size)


def _stage_input(model: ClassifierModel) -> torch.Tensor:
    """At the minimum size the last maps are 1x1 and strides can't be read off; 64 px can."""
    c, h, w = model.min_input_size
    side = max(h, min(model.input_size[1], 64))
    return torch.randn(1, c, side, side)


def _logits(out: torch.Tensor | tuple) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def test_registry_is_populated() -> None:
    families = {"resnet18", "resnet50", "densenet121", "googlenet", "inception_v3"}
    assert families <= set(ALL_MODELS)
    assert {f"{n}_cifar" for n in families} <= set(ALL_MODELS)
    assert list_models("densenet*") == sorted(n for n in ALL_MODELS if n.startswith("densenet"))


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"'resnet05'.*'resnet50'"):
        create_model("resnet05")


def test_duplicate_registration_raises() -> None:
    def resnet18(**kwargs):  # same __name__ as a registered model
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


@pytest.mark.parametrize("name", MODELS)
def test_forward_smallest_input(name: str) -> None:
    model = _build(name).eval()
    assert isinstance(model, ClassifierModel)
    with torch.no_grad():
        out = model(_input(model))
    assert isinstance(out, torch.Tensor), "eval mode returns a plain tensor"
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _build(name).train()
    out = model(_input(model))
    loss = sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", AUX_MODELS)
def test_aux_heads_train_tuple_eval_tensor(name: str) -> None:
    model = _build(name)
    x = _input(model)
    train_out = model.train()(x)
    assert isinstance(train_out, tuple) and hasattr(train_out, "_fields")
    assert train_out._fields[0] == "logits" and len(train_out) >= 2
    assert all(o.shape == (2, NUM_CLASSES) for o in train_out)
    with torch.no_grad():
        eval_out = model.eval()(x)
    assert isinstance(eval_out, torch.Tensor) and eval_out.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_head_widths_and_reset_classifier(name: str) -> None:
    model = _build(name).eval()
    x = _input(model)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_stage_features_match_feature_info(name: str) -> None:
    model = _build(name).eval()
    x = _stage_input(model)
    with torch.no_grad():
        stages = model.forward_intermediates(x)
        last = model.forward_features(x)
    assert len(stages) == len(model.feature_info) >= 3
    for info, fmap in zip(model.feature_info, stages, strict=True):
        assert fmap.shape[1] == info.num_chs, info
        # Valid (unpadded) convolutions make the ratio inexact; it rounds to the stated stride.
        assert round(math.log2(x.shape[-1] / fmap.shape[-1])) == math.log2(info.reduction), info
    assert model.feature_info[-1].num_chs == model.num_features
    assert stages[-1].shape == last.shape
    assert model(x).shape == (1, NUM_CLASSES)  # hooks were removed: forward still works


@pytest.mark.parametrize("name", _marked([n for n in ALL_MODELS if n.endswith("_cifar")]))
def test_small_image_variants_take_one_channel_28px(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1).eval()
    assert model.input_size[1:] == (32, 32)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
