"""Inception v3 specifics: the factorised blocks, transform_input, the aux head, small images."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from moderncnn.models import create_model
from moderncnn.models.inception import (
    GridReduction,
    GridReductionAsymmetric,
    InceptionAsymmetric,
    InceptionExpanded,
    InceptionFactorized,
    InceptionOutputs,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _kernels(block: nn.Module, prefix: str) -> list[tuple[int, int]]:
    return [
        m.kernel_size
        for n, m in block.named_modules()
        if n.startswith(prefix) and n.endswith("conv")
    ]


def test_blocks_factorise_as_the_paper_says_and_keep_or_halve_the_grid() -> None:
    a = InceptionFactorized(192, pool_features=32)
    assert _kernels(a, "branch3x3dbl") == [(1, 1), (3, 3), (3, 3)]  # a 5x5 as two stacked 3x3
    c = InceptionAsymmetric(768, channels_7x7=128)
    assert _kernels(c, "branch7x7_") == [(1, 1), (1, 7), (7, 1)]  # a 7x7 as 1x7 then 7x1
    e = InceptionExpanded(1280)
    assert _kernels(e, "branch3x3_2") == [(1, 3), (3, 1)]  # side by side, not stacked

    with torch.no_grad():
        assert a(torch.randn(1, 192, 35, 35)).shape == (1, 256, 35, 35)
        assert GridReduction(288)(torch.randn(1, 288, 35, 35)).shape == (1, 768, 17, 17)
        assert c(torch.randn(1, 768, 17, 17)).shape == (1, 768, 17, 17)
        assert GridReductionAsymmetric(768)(torch.randn(1, 768, 17, 17)).shape == (1, 1280, 8, 8)
        assert e(torch.randn(1, 1280, 8, 8)).shape == (1, 2048, 8, 8)


def test_transform_input_applies_the_imagenet_to_half_range_formula() -> None:
    kwargs = {"num_classes": 10, "aux_logits": False}
    plain = create_model("inception_v3", **kwargs).eval()
    for m in plain.modules():  # He init keeps eval-mode outputs O(1) (std 0.1 makes them huge)
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    transformed = create_model("inception_v3", transform_input=True, **kwargs).eval()
    transformed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 75, 75)
    manual = torch.stack([(x[:, c] * STD[c] + MEAN[c] - 0.5) / 0.5 for c in range(3)], 1)
    with torch.no_grad():
        expected, got, untransformed = plain(manual), transformed(x), plain(x)
    assert not torch.allclose(got[0], got[1], rtol=1e-2)  # the output depends on the input
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, untransformed, rtol=1e-2)


def test_transform_input_is_rejected_for_one_channel_input() -> None:
    with pytest.raises(ValueError, match="in_chans=1"):
        create_model("inception_v3_cifar", in_chans=1, transform_input=True)
    with pytest.raises(ValueError, match="'tiny'"):
        create_model("inception_v3", stem="tiny")


def test_train_returns_inception_outputs_tapped_at_mixed_6e() -> None:
    model = create_model("inception_v3_cifar", num_classes=10, dropout=0.0).train()
    taps: list[Tensor] = []
    model.Mixed_6e.register_forward_hook(lambda _m, _i, out: taps.append(out))
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, InceptionOutputs) and out._fields == ("logits", "aux_logits")
    assert out.logits.shape == out.aux_logits.shape == (2, 10)
    torch.testing.assert_close(out.aux_logits, model.AuxLogits(taps[0]))

    with torch.no_grad():
        eval_out = model.eval()(torch.randn(2, 3, 32, 32))
    assert type(eval_out) is Tensor and eval_out.shape == (2, 10)


def test_without_aux_head_train_mode_returns_a_plain_tensor() -> None:
    model = create_model("inception_v3_cifar", num_classes=10, aux_logits=False).train()
    assert model.AuxLogits is None
    assert not any(k.startswith("AuxLogits") for k in model.state_dict())
    out = model(torch.randn(2, 3, 16, 16))
    assert type(out) is Tensor and out.shape == (2, 10)


def test_reset_classifier_resets_the_aux_classifier_too() -> None:
    model = create_model("inception_v3_cifar", num_classes=10)
    model.reset_classifier(4)
    assert model.fc.out_features == model.AuxLogits.fc.out_features == 4
    out = model.train()(torch.randn(2, 3, 16, 16))
    assert all(o.shape == (2, 4) for o in out)


def test_min_input_size_is_299_with_the_aux_head_and_75_without() -> None:
    # The aux head's fixed 5x5/3 pool then 5x5 conv need Mixed_6e at 17 x 17.
    model = create_model("inception_v3", num_classes=10).train()
    assert model.min_input_size == (3, 299, 299)
    assert isinstance(model(torch.randn(2, 3, 299, 299)), InceptionOutputs)
    with pytest.raises(RuntimeError, match="Kernel size"):
        model(torch.randn(2, 3, 298, 298))

    no_aux = create_model("inception_v3", num_classes=10, aux_logits=False).train()
    assert no_aux.min_input_size == (3, 75, 75)
    assert no_aux(torch.randn(2, 3, 75, 75)).shape == (2, 10)
    with pytest.raises(RuntimeError):
        no_aux(torch.randn(2, 3, 74, 74))


def test_cifar_variant_min_input_size_is_the_smallest_that_trains() -> None:
    model = create_model("inception_v3_cifar", num_classes=10).train()
    c, h, w = model.min_input_size
    assert isinstance(model(torch.randn(2, c, h, w)), InceptionOutputs)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, c, h - 1, w - 1))


def test_cifar_variant_trains_on_28px_one_channel_with_its_adaptive_aux_head() -> None:
    model = create_model("inception_v3_cifar", num_classes=10, in_chans=1).train()
    assert model.Conv2d_1a_3x3.conv.stride == (1, 1) and model.AuxLogits.adaptive_pool
    assert model.input_size == (1, 32, 32)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert isinstance(out, InceptionOutputs)
    assert all(o.shape == (2, 10) and torch.isfinite(o).all() for o in out)
    # Padded stem, no pools: 28 until Mixed_5d; the grid reductions give 13 and 6.
    with torch.no_grad():
        maps = model.eval().forward_intermediates(x)
    assert [m.shape[-1] for m in maps] == [28, 28, 28, 13, 6]
