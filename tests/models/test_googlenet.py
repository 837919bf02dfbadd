"""GoogLeNet specifics: the paper's 5x5 option, transform_input, aux heads, the small-image stem."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from moderncnn.models import create_model
from moderncnn.models.googlenet import GoogLeNet, GoogLeNetOutputs, InceptionBlock

# ImageNet statistics, written out again so the test checks the formula, not the code's constants.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _blocks(model: GoogLeNet) -> list[InceptionBlock]:
    return [m for m in model.modules() if isinstance(m, InceptionBlock)]


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _kaiming(model: nn.Module) -> nn.Module:
    """He init: eval-mode signals then survive the depth (std 0.01 shrinks them to nothing)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def test_default_branch3_is_torchvision_3x3_and_paper_option_is_5x5() -> None:
    default = create_model("googlenet", num_classes=10)
    paper = create_model("googlenet", num_classes=10, branch3_kernel_size=5)
    blocks = _blocks(paper)
    assert len(blocks) == 9
    for b_default, b_paper in zip(_blocks(default), blocks, strict=True):
        assert b_default.branch3[1].conv.kernel_size == (3, 3)
        assert b_paper.branch3[1].conv.kernel_size == (5, 5)
        assert b_paper.branch3[1].conv.padding == (2, 2)  # "same" padding keeps the map size
    # Only the nine "5x5" convolutions grow: (25 - 9) weights per input/output channel pair.
    extra = sum(16 * b.branch3[1].conv.in_channels * b.branch3[1].conv.out_channels for b in blocks)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(paper) - count(default) == extra

    out = paper.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(out, GoogLeNetOutputs)
    assert all(o.shape == (2, 10) and torch.isfinite(o).all() for o in out)


def test_bad_options_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="got 7"):
        GoogLeNet(branch3_kernel_size=7)
    with pytest.raises(ValueError, match="'tiny'"):
        GoogLeNet(stem="tiny")
    with pytest.raises(ValueError, match="in_chans=1"):
        create_model("googlenet_cifar", in_chans=1, transform_input=True)


def test_transform_input_applies_the_imagenet_to_half_range_formula() -> None:
    plain = _kaiming(create_model("googlenet", num_classes=10)).eval()
    transformed = create_model("googlenet", num_classes=10, transform_input=True).eval()
    transformed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 48, 48)
    # Undo (x - mean) / std, then apply (x - 0.5) / 0.5, channel by channel.
    manual = torch.stack([(x[:, c] * STD[c] + MEAN[c] - 0.5) / 0.5 for c in range(3)], 1)
    with torch.no_grad():
        expected = plain(manual)
        got = transformed(x)
        untransformed = plain(x)
    assert not torch.allclose(got[0], got[1], rtol=1e-2)  # the output depends on the input
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, untransformed, rtol=1e-2)


def test_train_returns_named_aux_outputs_tapped_at_4a_and_4d() -> None:
    model = _no_dropout(create_model("googlenet", num_classes=10)).train()
    taps: dict[str, Tensor] = {}
    for name in ("inception4a", "inception4d"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: taps.__setitem__(name, out)
        )
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, GoogLeNetOutputs)
    assert out._fields == ("logits", "aux_logits2", "aux_logits1")
    # Field order is torchvision's: aux_logits2 comes from the later tap (inception4d, 528 chs).
    torch.testing.assert_close(out.aux_logits1, model.aux1(taps["inception4a"]))
    torch.testing.assert_close(out.aux_logits2, model.aux2(taps["inception4d"]))
    assert not torch.allclose(out.aux_logits1, out.aux_logits2)

    with torch.no_grad():
        eval_out = model.eval()(torch.randn(2, 3, 64, 64))
    assert type(eval_out) is Tensor and eval_out.shape == (2, 10)


def test_without_aux_heads_train_mode_returns_a_plain_tensor() -> None:
    model = create_model("googlenet", num_classes=10, aux_logits=False).train()
    assert model.aux1 is None and model.aux2 is None
    assert not any(k.startswith("aux") for k in model.state_dict())
    out = model(torch.randn(2, 3, 64, 64))
    assert type(out) is Tensor and out.shape == (2, 10)


def test_reset_classifier_resets_the_aux_classifiers_too() -> None:
    model = create_model("googlenet", num_classes=10)
    model.reset_classifier(4)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features == 4
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert all(o.shape == (2, 4) for o in out)


def test_min_input_size_is_the_smallest_that_trains_with_aux_heads() -> None:
    for name in ("googlenet", "googlenet_cifar"):
        model = create_model(name, num_classes=10).train()
        c, h, w = model.min_input_size
        out = model(torch.randn(2, c, h, w))
        assert isinstance(out, GoogLeNetOutputs)
        with pytest.raises(RuntimeError):
            model(torch.randn(2, c, h - 1, w - 1))


def test_cifar_variant_keeps_resolution_and_trains_on_28px_one_channel() -> None:
    model = create_model("googlenet_cifar", num_classes=10, in_chans=1).train()
    assert model.conv1.conv.kernel_size == (3, 3) and model.conv1.conv.stride == (1, 1)
    assert model.input_size == (1, 32, 32)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert all(o.shape == (2, 10) and torch.isfinite(o).all() for o in out)
    # No stem pooling: 28 -> 28 at inception3b, then the two in-network pools give 14 and 7.
    with torch.no_grad():
        maps = model.eval().forward_intermediates(x)
    assert [m.shape[-1] for m in maps] == [28, 28, 28, 14, 7]
    assert [i.reduction for i in model.feature_info] == [1, 1, 1, 2, 4]
