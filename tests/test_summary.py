"""summary(): MACs match torchvision's published numbers, shapes and totals are right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.cli import main as cli_main
from moderncnn.models import get_variant_config
from moderncnn.models.layer_table import summary

# torchvision's model table ("GFLOPS", which are multiply-accumulates), 224 x 224 input
# except the Inceptions at 299 x 299.
PUBLISHED_GMACS = {
    "resnet18": 1.814,
    "resnet34": 3.664,
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "densenet121": 2.834,
    "densenet169": 3.36,
    "densenet201": 4.291,
    "densenet161": 7.728,
    "googlenet": 1.498,
    "inception_v3": 5.713,
    "resnext50_32x4d": 4.23,
    "resnext101_32x8d": 16.41,
    "resnext101_64x4d": 15.46,
    "wide_resnet50_2": 11.4,
    "wide_resnet101_2": 22.75,
    # timm's model cards (GMACs at 299 x 299): timm/inception_v4.tf_in1k and
    # timm/inception_resnet_v2.tf_in1k.
    "inception_v4": 12.3,
    "inception_resnet_v2": 13.2,
}


def meta_model(name: str, **kwargs) -> nn.Module:
    """Our model with no memory behind it: shapes and MACs need no real weights."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_macs_match_torchvision_published(name: str) -> None:
    result = summary(meta_model(name), input_size=get_variant_config(name).input_size)
    assert result.gmacs == pytest.approx(PUBLISHED_GMACS[name], rel=0.02)


def test_macs_of_a_hand_countable_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    result = summary(model, input_size=(3, 8, 8), batch_size=2)
    conv, linear = 2 * (8 * 8) * 8 * (3 * 3 * 3), 2 * (8 * 8 * 8) * 10  # per output, k*k*c_in
    assert result.macs == conv + linear
    assert [r.macs for r in result.rows] == [conv, 0, linear]
    assert result.output_shape == (2, 10)


def test_param_totals_equal_the_model_parameters() -> None:
    model = create_model("resnet18_cifar", num_classes=10)
    model.layer1.requires_grad_(False)
    result = summary(model, input_size=(3, 32, 32))
    frozen = sum(p.numel() for p in model.layer1.parameters())
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert result.trainable_params == result.total_params - frozen > 0
    assert result.param_bytes == 4 * result.total_params  # fp32
    by_name = {r.name: r for r in result.rows}
    assert by_name["fc"].params == 512 * 10 + 10
    assert by_name["layer1"].params == frozen


def test_shapes_rows_and_stages_of_resnet50() -> None:
    result = summary(meta_model("resnet50"), depth=2)
    by_name = {r.name: r for r in result.rows}
    assert by_name["conv1"].output_shape == (1, 64, 112, 112)
    assert by_name["layer1"].output_shape == (1, 256, 56, 56)
    assert by_name["layer4.2"].output_shape == (1, 2048, 7, 7)
    assert max(r.depth for r in result.rows) == 2
    assert "layer1.0.conv1" not in by_name  # depth 3 is cut
    assert [s.output_shape for s in result.stages][-1] == (1, 2048, 7, 7)
    table = str(result)
    assert "1 x 256 x 56 x 56" in table and "Bottleneck" in table
    assert "25,557,032" in table and "4.089" in table


def test_restores_train_mode_and_leaves_batch_norm_statistics() -> None:
    model = create_model("resnet18_cifar", num_classes=10).train()
    model.layer2.eval()
    before = model.bn1.running_mean.clone()
    summary(model, input_size=(3, 32, 32))
    assert model.training and model.layer1.training and not model.layer2.training
    assert torch.equal(model.bn1.running_mean, before)


def test_uncalled_aux_heads_have_no_shape_in_eval_summary() -> None:
    result = summary(meta_model("googlenet"), depth=1)
    by_name = {r.name: r for r in result.rows}
    assert by_name["aux1"].output_shape is None and by_name["aux1"].macs == 0
    assert by_name["aux1"].params > 0
    assert result.output_shape == (1, 1000)


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["summary", "--arch", "resnet18", "--depth", "1", "--num_classes", "10"])
    out = capsys.readouterr().out
    assert code == 0
    assert "layer4" in out and "1 x 512 x 7 x 7" in out and "1 x 10" in out
    assert "MACs (G):           1.814" in out


def test_cli_input_size_and_in_chans(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        ["summary", "--arch", "resnet18_cifar", "--in_chans", "1", "--input_size", "1", "28", "28"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "input 1 x 1 x 28 x 28" in out and "1 x 512 x 4 x 4" in out


def test_cli_unknown_name_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["summary", "--arch", "resnet5O"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "unknown model name 'resnet5O'" in captured.err and "'resnet50'" in captured.err
    assert "Traceback" not in captured.err


def test_cli_too_small_input_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["summary", "--arch", "inception_v3", "--input_size", "3", "32", "32"])
    assert code == 1 and "smaller than" in capsys.readouterr().err


def test_rows_follow_the_forward_pass() -> None:
    """ResNet registers conv1, maxpool, bn1, relu; its forward runs conv1, bn1, relu, maxpool."""
    model = create_model("resnet18", num_classes=10, channels=[4, 8, 8, 8])
    rows = [row.name for row in summary(model, (3, 64, 64), depth=1).rows]
    assert rows[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1"] and rows[-1] == "fc"
    nested = [row.name for row in summary(model, (3, 64, 64), depth=2).rows]
    assert nested.index("layer1") < nested.index("layer1.0") < nested.index("layer2")


def test_a_functional_global_pool_gets_its_row() -> None:
    """Issue 24: forward_head pools with a function, so no hook saw it and the table went from
    layer4 (N x C x H x W) straight to fc (N x C)."""
    model = create_model("resnet18", num_classes=10, channels=[4, 8, 8, 16])
    result = summary(model, (3, 64, 64), depth=1)
    names = [row.name for row in result.rows]
    assert names[-3:] == ["layer4", "global_pool", "fc"]
    pool = result.rows[-2]
    assert pool.output_shape == (1, 16) and pool.params == 0 and "global_pool" in str(result)
    plain = summary(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), (3, 8, 8))
    assert "global_pool" not in [row.name for row in plain.rows]  # a module has its own row
