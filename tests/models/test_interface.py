"""The shared model interface, checked for every registered model (a new one is tested free)."""

from __future__ import annotations

import ast
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from moderncnn.models import (
    ClassifierModel,
    UnknownModelError,
    VariantConfig,
    create_model,
    get_variant_config,
    list_models,
    register_model,
    register_small_image_twins,
    register_variants,
)

ALL_MODELS = list_models()
# Deeper and wider variants run the same code as resnet18/50, resnext50_32x4d, preact_resnet18
# and densenet121 with more units or channels: they are checked in the full sweep
# (`pytest -m sweep`); parameter counts and parity cover them always.
# The papers' CIFAR networks: resnet20, plain20 and densenet40 stand for them (densenet_bc_100
# runs densenet121's code)
# (resnet1202, 19M parameters in 600 units, costs seconds even on a 4 x 4 image).
CIFAR_DEEP = (
    "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "plain32", "plain44", "plain56", "plain110", "preact_resnet110", "preact_resnet164",
    "densenet_bc_100",
)  # fmt: skip
DEEP = (
    "resnet101", "resnet152", "resnext101", "wide_resnet", "preact_resnet34",
    "densenet161", "densenet169", "densenet201", *CIFAR_DEEP,
)  # fmt: skip
# A full-width Inception-v4 / Inception-ResNet-v2 on a 28-32 px image costs 6-10 GMACs: swept
# (test_inception_v4.py checks their small-image stage maps at a fraction of the width).
HEAVY_SMALL_IMAGE = ("inception_v4_cifar", "inception_resnet_v2_cifar")


def _marked(names: list[str], also: tuple[str, ...] = ()) -> list:
    return [
        pytest.param(n, marks=pytest.mark.sweep) if n.startswith(DEEP + also) else n for n in names
    ]


MODELS = _marked(ALL_MODELS)
# Networks designed for small images (the papers' CIFAR ResNets and DenseNets): their 3x3 stem
# is their own, so they have no ``_cifar`` twin.
SMALL_BY_DESIGN = [
    n for n in ALL_MODELS if get_variant_config(n).stem == "cifar" and not n.endswith("_cifar")
]
AUX_MODELS = [n for n in ALL_MODELS if get_variant_config(n).aux_heads]
NUM_CLASSES = 7


def _build(name: str, **kwargs) -> ClassifierModel:
    return create_model(name, num_classes=NUM_CLASSES, **kwargs)


def _input(model: ClassifierModel, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.min_input_size)


def _stage_input(model: ClassifierModel) -> torch.Tensor:
    """At the minimum size the last maps are 1x1 and strides can't be read off; 64 px can,
    and twice the minimum for the unpadded (TensorFlow "VALID") stems of the Inceptions."""
    c, h, w = model.min_input_size
    side = max(h, min(model.input_size[1], 64))
    if h > 64:
        side = min(2 * h, model.input_size[1])
    return torch.randn(1, c, side, side)


def _logits(out: torch.Tensor | tuple) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def test_registry_is_populated() -> None:
    families = {"resnet18", "resnet50", "densenet121", "googlenet", "inception_v3"}
    families |= {"resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2"}
    families |= {"wide_resnet101_2", "inception_v4", "inception_resnet_v2", "preact_resnet18"}
    families |= {"preact_resnet34", "preact_resnet50"}
    assert families <= set(ALL_MODELS)
    assert {f"{n}_cifar" for n in families} <= set(ALL_MODELS)
    papers = {"resnet20", "resnet1202", "plain20", "plain110", "preact_resnet110"}
    papers |= {"preact_resnet164", "densenet40", "densenet_bc_100"}
    assert papers <= set(SMALL_BY_DESIGN)
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


@pytest.mark.parametrize("name", _marked(ALL_MODELS, HEAVY_SMALL_IMAGE))
def test_stage_features_match_feature_info(name: str) -> None:
    model = _build(name).eval()
    x = _stage_input(model)
    with torch.no_grad():
        stages = model.forward_intermediates(x)
        last = model.forward_features(x)
    assert len(stages) == len(model.feature_info) >= 3
    for info, fmap in zip(model.feature_info, stages, strict=True):
        assert fmap.shape[1] == info.num_chs, info
        # Padding makes the ratio round to the stated stride; valid (unpadded) convolutions
        # shrink the maps a few pixels more, to between the stride and twice it.
        ratio = x.shape[-1] / fmap.shape[-1]
        rounded = 2 ** round(math.log2(ratio)) == info.reduction
        assert rounded or info.reduction <= ratio < 2 * info.reduction, (info, ratio)
    assert model.feature_info[-1].num_chs == model.num_features
    assert stages[-1].shape == last.shape
    assert model(x).shape == (1, NUM_CLASSES)  # hooks were removed: forward still works


@pytest.mark.parametrize(
    "name",
    _marked([n for n in ALL_MODELS if n.endswith("_cifar")] + SMALL_BY_DESIGN, HEAVY_SMALL_IMAGE),
)
def test_small_image_variants_take_one_channel_28px(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1).eval()
    assert model.input_size[1:] == (32, 32)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# --- Variant metadata ---------------------------------------------------------------------


def _meta(name: str, **kwargs) -> ClassifierModel:
    with torch.device("meta"):  # no memory, no initialisation cost
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_is_described_by_its_variant_config(name: str) -> None:
    config = get_variant_config(name)
    assert isinstance(config, VariantConfig) and config.name == name
    model = _meta(name)
    assert model.input_size == config.input_size
    assert model.classifier_name == config.classifier
    assert model.aux_modules() == list(config.aux_heads)
    heads = model.head_modules()
    assert heads[0] == config.classifier and len(heads) == 1 + len(config.aux_heads)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[h], nn.Linear) for h in heads), heads
    assert all(modules[h].out_features == 1000 for h in heads)
    if name in SMALL_BY_DESIGN:
        assert config.small_image_of is None and config.input_size[1:] == (32, 32)
    else:
        assert config.stem == ("cifar" if name.endswith("_cifar") else "imagenet")
    assert config.crop_size <= config.resize_size
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)


def test_head_modules_name_the_classifier_and_each_aux_heads_last_layer() -> None:
    assert _meta("googlenet").head_modules() == ["fc", "aux1.fc2", "aux2.fc2"]
    assert _meta("googlenet").aux_modules() == ["aux1", "aux2"]
    assert _meta("inception_v3").head_modules() == ["fc", "AuxLogits.fc"]
    assert _meta("googlenet", aux_logits=False).head_modules() == ["fc"]
    assert _meta("googlenet", aux_logits=False).aux_modules() == []
    assert _meta("densenet121").head_modules() == ["classifier"]
    assert _meta("inception_v4").head_modules() == ["last_linear"]
    assert _meta("inception_resnet_v2").head_modules() == ["classif"]


@pytest.mark.parametrize(
    "name", [n for n in ALL_MODELS if not n.endswith("_cifar") and n not in SMALL_BY_DESIGN]
)
def test_every_variant_has_a_small_image_twin_made_by_one_rule(name: str) -> None:
    config, twin = get_variant_config(name), get_variant_config(f"{name}_cifar")
    assert twin.small_image_of == name and twin.family == config.family
    assert twin.model_args == config.model_args  # the same depths and widths
    assert twin.input_size == (3, 32, 32) and (twin.crop_size, twin.resize_size) == (32, 32)
    assert not twin.weights and twin.stem == "cifar"
    assert (twin.classifier, twin.aux_heads) == (config.classifier, config.aux_heads)


def test_networks_designed_for_small_images_have_no_twin() -> None:
    assert SMALL_BY_DESIGN and not [n for n in SMALL_BY_DESIGN if f"{n}_cifar" in ALL_MODELS]
    with pytest.raises(ValueError, match="only the paper's 3x3 stem"):
        _meta("resnet20", stem="imagenet")


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n.endswith("_cifar")])
def test_every_small_image_twin_takes_an_explicit_stem_the_same_way(name: str) -> None:
    twin = _meta(name, stem="cifar")
    imagenet = _meta(name, stem="imagenet")
    original = _meta(get_variant_config(name).small_image_of)
    assert twin.input_size[1:] == (32, 32)
    assert imagenet.input_size == original.input_size
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert {k: v.shape for k, v in imagenet.state_dict().items()} == shapes


def test_get_variant_config_of_an_unknown_name_raises_like_create_model() -> None:
    with pytest.raises(UnknownModelError, match=r"'resnet05'.*'resnet50'"):
        get_variant_config("resnet05")


def test_variant_config_carries_the_weights_and_eval_transform() -> None:
    resnet50 = get_variant_config("resnet50")
    assert list(resnet50.weights) == ["IMAGENET1K_V2", "IMAGENET1K_V1"]  # the default first
    assert resnet50.default_weights.file_name == "resnet50-11ad3fa6.pth"
    assert resnet50.default_weights.hash_prefix == "11ad3fa6"
    assert (resnet50.crop_size, resnet50.resize_size) == (224, 232)
    assert resnet50.model_args["layers"] == (3, 4, 6, 3)
    v3 = get_variant_config("inception_v3")
    assert (v3.input_size, v3.crop_size, v3.resize_size) == ((3, 299, 299), 299, 342)
    assert v3.default_weights.transform_input and v3.aux_heads == ("AuxLogits",)
    v4 = get_variant_config("inception_v4").default_weights
    assert v4.source == "timm" and v4.mean == v4.std == (0.5, 0.5, 0.5)
    assert (v4.crop_size, v4.resize_size, v4.interpolation) == (299, 341, "bicubic")
    assert v4.input_mean == (0.485, 0.456, 0.406)  # transform_input bridges the two
    assert get_variant_config("googlenet").default_weights.aux_trained is False
    assert get_variant_config("resnext50_32x4d").model_args["groups"] == 32


def test_registering_a_duplicate_variant_or_twin_raises() -> None:
    with pytest.raises(ValueError, match="'resnet18' is already declared"):
        register_variants(VariantConfig("resnet18", "resnet"))
    table = {"resnet18": get_variant_config("resnet18")}
    with pytest.raises(ValueError, match="'resnet18_cifar' is already declared"):
        register_small_image_twins(table, lambda *args: nn.Identity())


def test_entry_points_keep_their_module_and_docstring() -> None:
    from moderncnn.models import googlenet, resnet

    assert resnet.resnet18_cifar.__module__ == "moderncnn.models.resnet"
    assert "small-image stem" in resnet.resnet18_cifar.__doc__
    assert googlenet.googlenet_cifar(num_classes=3).fc.out_features == 3


def test_building_a_model_never_reaches_up_into_transfer() -> None:
    """The registry and the variant tables are plain data; models never import the layers
    above them (moderncnn.transfer, training, inference)."""
    code = (
        "import sys; import moderncnn.models as m; m.create_model('resnet18_cifar');"
        "m.get_variant_config('inception_v4');"
        "print(sorted(k for k in sys.modules if k.startswith('moderncnn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = ast.literal_eval(out.strip())
    above = ("moderncnn.transfer", "moderncnn.training", "moderncnn.inference", "moderncnn.data")
    assert not [k for k in loaded if k.startswith(above)], loaded
