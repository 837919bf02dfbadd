"""DenseNet-specific behaviour: checkpointed layers, block widths, compression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models import create_model, densenet
from moderncnn.models.densenet import DenseBlock, DenseLayer, Transition


def test_memory_efficient_matches_plain_outputs_gradients_and_statistics() -> None:
    kwargs = dict(num_classes=5, growth_rate=8, block_config=(2, 2), num_init_features=16)
    plain = create_model("densenet121_cifar", **kwargs)
    efficient = create_model("densenet121_cifar", memory_efficient=True, **kwargs)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for model in (plain, efficient):
        out = model.train()(x)
        out.square().sum().backward()
        outputs.append(out.detach())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    # The backward pass re-runs each bottleneck; its batch norm must not count the batch twice.
    for (name, a), b in zip(plain.named_buffers(), efficient.buffers(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), efficient.eval()(x), atol=1e-6)


def test_dense_block_concatenates_growth_rate_channels_per_layer() -> None:
    block = DenseBlock(3, in_chs=10, growth_rate=4, bn_size=2)
    x = torch.randn(2, 10, 8, 8)
    out = block(x)
    assert out.shape == (2, 10 + 3 * 4, 8, 8)
    assert torch.equal(out[:, :10], x), "the block's input passes through unchanged"


def test_width_depth_and_compression_set_num_features() -> None:
    model = create_model(
        "densenet121", num_classes=3, growth_rate=12, block_config=(2, 3, 4),
        num_init_features=24, compression=0.5,
    )  # fmt: skip
    # 24 + 2*12 = 48 -> 24; 24 + 3*12 = 60 -> 30; 30 + 4*12 = 78
    assert model.num_features == 78
    assert [f.num_chs for f in model.feature_info] == [48, 60, 78]


TINY = dict(growth_rate=4, block_config=(2, 2, 2, 2), bn_size=2)  # real structure, tiny widths


def test_memory_efficient_checkpoints_only_when_gradients_are_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = densenet.cp.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(densenet.cp, "checkpoint", counting_checkpoint)
    model = create_model("densenet121_cifar", memory_efficient=True, num_classes=3, **TINY)
    x = torch.randn(2, 3, 16, 16)
    model.train()(x).sum().backward()
    assert len(calls) == 8, "one checkpoint per dense layer"
    with torch.no_grad():
        model.eval()(x)
    assert len(calls) == 8, "inference stores nothing, so there is nothing to recompute"


def test_dense_layer_bottleneck_and_growth() -> None:
    layer = DenseLayer(in_chs=10, growth_rate=4, bn_size=3)
    assert layer.conv1.weight.shape == (12, 10, 1, 1)  # 1x1 to bn_size * growth_rate
    assert layer.conv2.weight.shape == (4, 12, 3, 3)  # 3x3 to growth_rate
    out = layer([torch.randn(2, 6, 5, 5), torch.randn(2, 4, 5, 5)])  # concatenated: 10 chs
    assert out.shape == (2, 4, 5, 5)


def test_transition_compresses_and_halves_the_map() -> None:
    transition = Transition(12, 6)
    assert [name for name, _ in transition.named_children()] == ["norm", "relu", "conv", "pool"]
    assert transition(torch.randn(2, 12, 7, 7)).shape == (2, 6, 3, 3)


@pytest.mark.parametrize("name", ["densenet121_cifar", "densenet161_cifar"])
def test_cifar_variant_one_channel_28px_and_stage_strides(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1, **TINY).eval()
    assert "pool0" not in dict(model.features.named_children())
    conv0 = model.features.conv0
    assert (conv0.kernel_size, conv0.stride, conv0.in_channels) == ((3, 3), (1, 1), 1)
    assert conv0.out_channels == 2 * 4, "the stem has twice the growth rate"
    assert model.input_size == (1, 32, 32) and model.min_input_size == (1, 8, 8)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert model(x).shape == (2, 10)
    assert [f.reduction for f in model.feature_info] == [1, 2, 4, 8]
    for info, fmap in zip(model.feature_info, maps, strict=True):
        side = 28 // info.reduction  # unpadded 2x2 average pools round down: 28, 14, 7, 3
        assert fmap.shape == (2, info.num_chs, side, side), info


def test_one_channel_imagenet_model() -> None:
    model = create_model("densenet121", num_classes=5, in_chans=1, **TINY).eval()
    assert model.features.conv0.weight.shape == (8, 1, 7, 7)
    assert model.input_size == (1, 224, 224) and model.min_input_size == (1, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 1, 64, 64))
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]


def test_last_stage_map_is_forward_features_after_the_final_relu() -> None:
    model = create_model("densenet121", num_classes=3, **TINY).eval()
    for m in model.modules():  # non-trivial BN so that the final ReLU has negatives to clip
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias, -1.0, 1.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        last = model.forward_intermediates(x)[-1]
        features = model.forward_features(x)
        before_relu = model.features[:-1](x)  # everything up to norm5
    assert torch.equal(last, features)
    assert torch.equal(features, torch.relu(before_relu)) and (before_relu < 0).any()
    assert model.feature_info[-1].num_chs == model.num_features == features.shape[1]


@pytest.mark.parametrize(
    ("name", "kwargs", "side"),
    [
        ("densenet121", {}, 32),
        ("densenet121_cifar", {}, 8),
        ("densenet121_cifar", dict(block_config=(1, 1, 1)), 4),
    ],
)
def test_min_input_size_is_the_total_stride_and_trains(name: str, kwargs: dict, side: int) -> None:
    model = create_model(name, num_classes=3, **(TINY | kwargs)).train()
    assert model.min_input_size == (3, side, side)
    x = torch.randn(2, *model.min_input_size)
    model(x).sum().backward()
    with torch.no_grad():
        assert model.eval().forward_features(x).shape[-2:] == (1, 1)


def test_kwargs_override_what_the_entry_point_fixes() -> None:
    model = create_model("densenet161_cifar", growth_rate=6, block_config=(1, 1, 1))
    assert model.features.conv0.out_channels == 12, "stem follows the overridden growth rate"
    assert model.features.denseblock1.denselayer1.conv2.out_channels == 6
    model = create_model("densenet121_cifar", stem="imagenet", num_init_features=10, **TINY)
    assert model.features.conv0.kernel_size == (7, 7) and model.features.conv0.out_channels == 10


def test_drop_rate_only_acts_in_training() -> None:
    plain = create_model("densenet121_cifar", num_classes=3, **TINY)
    dropped = create_model("densenet121_cifar", num_classes=3, drop_rate=0.5, **TINY)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), dropped.eval()(x))
        dropped.train()
        assert not torch.equal(dropped(x), dropped(x))


def test_init_follows_torchvision() -> None:
    model = create_model("densenet121", num_classes=3, **TINY)
    assert torch.all(model.classifier.bias == 0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    conv = model.features.denseblock2.denselayer1.conv1  # He normal, fan_in = in_channels
    assert conv.weight.std().item() == pytest.approx((2 / conv.in_channels) ** 0.5, rel=0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(compression=0.0), r"compression must be in \(0, 1\], got 0.0"),
        (dict(block_config=()), r"block_config needs .* got \[\]"),
        (dict(block_config=(2, 0)), r"block_config needs .* got \[2, 0\]"),
        (dict(stem="tiny"), r"stem must be 'imagenet' or 'cifar', got 'tiny'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("densenet121", **kwargs)
