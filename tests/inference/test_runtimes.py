"""Runtimes and precisions: ONNX Runtime and OpenVINO give eager's logits at fp32; int8 keeps
its accuracy on real images; bf16 and threads are checked in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from moderncnn import create_model, list_models
from moderncnn.cli import main as cli_main
from moderncnn.data.idx import read_idx
from moderncnn.inference import load_model, save_model
from moderncnn.inference import runtimes as rt
from moderncnn.inference.quantize import QuantizationError, int8_path, quantize_export
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ConfigError
from moderncnn.transfer import extract_features

pytest.importorskip("onnxruntime")
ENGINES = ["onnxruntime", "openvino"]
FAST = {"resnet18_cifar", "googlenet_cifar"}  # the rest (deep graphs, 2-20 s each): sweep
MODELS_AND_ENGINES = [
    (n, e) if n in FAST else pytest.param(n, e, marks=pytest.mark.sweep)
    for n in list_models()
    for e in ENGINES
]
TINY = {"channels": [8, 16], "layers": [1, 1]}
QUICKSTART = {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}  # configs/quickstart.yaml
GREY28 = Preprocess(28, None, (0.286,), (0.353,))


def measured_batch_norms(model: nn.Module, size: tuple[int, ...]) -> nn.Module:
    """Random BN affine parameters and statistics measured on random images (not a no-op fold)."""
    g = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        model(torch.randn(4, *size, generator=g))
    return model.eval()


def saved(tmp_path: Path, name: str, **kwargs) -> tuple[Path, nn.Module, tuple[int, int, int]]:
    model = create_model(name, num_classes=5, **kwargs)
    c, h, w = model.min_input_size
    # 32 px, or 75 for the ImageNet Inceptions (inception_v3's 299 is for its aux head): at the
    # smallest legal input OpenVINO refuses a pooling window larger than its 2 x 2 map.
    side = 75 if h > 32 else 32
    size = (c, side, side)
    measured_batch_norms(model, size)
    pre = Preprocess.for_size(size[-1], [0.5] * c, [0.25] * c)
    card = ModelCard(name, 5, c, kwargs, preprocess=pre)
    return save_model(model, tmp_path / name, card), model, size


@pytest.mark.parametrize(("name", "engine"), MODELS_AND_ENGINES)
def test_runtime_matches_eager_at_fp32(name: str, engine: str, tmp_path: Path) -> None:
    pytest.importorskip(engine)
    folder, model, size = saved(tmp_path, name)
    x = torch.randn(3, *size)
    with torch.no_grad():
        expected = model(x)
    loaded = load_model(folder, runtime=engine)
    actual = loaded(x)
    assert loaded.engine == engine
    assert (actual - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
    assert len(list(folder.glob("model.*.onnx"))) == 1  # the export, cached beside the model


def test_export_is_cached_by_weights_and_stale_ones_removed(tmp_path: Path) -> None:
    folder, model, size = saved(tmp_path, "resnet18_cifar", **TINY)
    load_model(folder, runtime="onnxruntime")(torch.randn(1, *size))
    (first,) = folder.glob("model.*.onnx")
    stamp = first.stat().st_mtime_ns
    load_model(folder, runtime="onnxruntime")(torch.randn(2, *size))
    assert first.stat().st_mtime_ns == stamp  # reused, not exported again
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    card = load_model(folder).card
    save_model(model, folder, card)
    out = load_model(folder, runtime="onnxruntime")(torch.zeros(1, *size))
    (second,) = folder.glob("model.*.onnx")
    assert second != first and not first.exists()
    torch.testing.assert_close(out, model(torch.zeros(1, *size)), atol=1e-4, rtol=0)


def test_auto_picks_an_installed_runtime_per_device(monkeypatch) -> None:
    installed = rt.installed_runtimes()
    expected = "onnxruntime" if "onnxruntime" in installed else installed[-1]
    assert rt.choose_runtime("auto", "fp32", "cpu") == expected
    assert rt.choose_runtime("auto", "fp32", "cuda") == "torch"
    monkeypatch.setattr(rt, "installed_runtimes", lambda: ["torch"])
    assert rt.choose_runtime("auto") == "torch"
    with pytest.raises(ConfigError, match="'openvino' is not installed; pip install openvino"):
        rt.choose_runtime("openvino")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        rt.choose_runtime("tensorrt")


def test_bf16_and_int8_are_refused_in_one_line_where_they_cannot_run(monkeypatch) -> None:
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no bf16 convolutions"):
        rt.choose_runtime("onnxruntime", "bf16")
    if "openvino" in rt.installed_runtimes():
        with pytest.raises(ConfigError, match="needs a CPU with bf16 units"):
            rt.choose_runtime("openvino", "bf16")
    with pytest.warns(UserWarning, match="torch emulates it"):
        assert rt.choose_runtime("auto", "bf16") == "torch"
    with pytest.raises(ConfigError, match="choose runtime 'onnxruntime' or 'openvino'"):
        rt.choose_runtime("torch", "int8")
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: True)
    assert rt.choose_runtime("torch", "bf16") == "torch"


def test_threads_are_one_setting(monkeypatch) -> None:
    monkeypatch.setenv(rt.THREADS_ENV, "3")
    assert rt.resolve_threads() == 3 and rt.resolve_threads(1) == 1
    monkeypatch.setenv(rt.THREADS_ENV, "many")
    with pytest.raises(ConfigError, match="MODERNCNN_THREADS must be a positive int"):
        rt.resolve_threads()
    with pytest.raises(ConfigError, match="threads must be a positive int, got 0"):
        rt.resolve_threads(0)


def _fashion(root: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(root / f"{split}-images-idx3-ubyte.gz")[:n]
    labels = read_idx(root / f"{split}-labels-idx1-ubyte.gz")[:n]
    x = torch.from_numpy(images.copy()).float()[:, None] / 255
    return GREY28.normalize(x), torch.from_numpy(labels.copy()).long()


def _trained_tiny(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The quickstart's ResNet trained for seconds: ~78% on Fashion-MNIST, points to lose."""
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", num_classes=10, in_chans=1, **QUICKSTART)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_int8_keeps_accuracy_on_real_images_and_is_refused_beyond_budget(
    fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    train_x, train_y = _fashion(fashion_mnist_dir, "train", 3000)
    val_x, val_y = _fashion(fashion_mnist_dir, "t10k", 1000)
    model = _trained_tiny(train_x, train_y)
    card = ModelCard("resnet18_cifar", 10, 1, QUICKSTART, preprocess=GREY28)
    folder = save_model(model, tmp_path / "saved", card)
    loaded = load_model(folder, runtime="onnxruntime")
    fp32_file = loaded.onnx_file()
    calibration = train_x[:256].split(64)

    def validation():
        return zip(val_x.split(250), val_y.split(250), strict=True)

    with pytest.raises(QuantizationError, match="budget -100.*--max_drop"):
        quantize_export(fp32_file, tmp_path / "no.onnx", calibration, validation, max_drop=-100)
    assert not (tmp_path / "no.onnx").exists()

    out = int8_path(fp32_file)
    int8_card = quantize_export(fp32_file, out, calibration, validation)
    m = int8_card.metrics
    assert m["fp32_val_acc"] > 0.7  # a model that has learnt something
    assert m["int8_drop_points"] <= 1.0 and m["int8_eval_images"] == 1000
    assert json.loads(rt.sidecar_path(out).read_text())["precision"] == "int8"
    with torch.no_grad():
        eager_top1 = model(val_x[:200]).argmax(1)
    for engine in [e for e in ENGINES if e in rt.installed_runtimes()]:
        int8 = load_model(out, runtime=engine)
        assert int8.precision == "int8" and int8.card.metrics == m
        agree = (int8(val_x[:200]).argmax(1) == eager_top1).float().mean().item()
        assert agree >= 0.95, engine


def test_predict_and_features_cli_choose_the_runtime(
    tmp_path: Path, cifar_samples_dir: Path, capsys
) -> None:
    folder, model, _ = saved(tmp_path, "resnet18_cifar", **TINY)
    outputs = {}
    for engine in ["torch", "onnxruntime"]:
        assert cli_main(["predict", "--model", str(folder), str(cifar_samples_dir),
                         "--runtime", engine, "--topk", "1", "--threads", "1"]) == 0  # fmt: skip
        outputs[engine] = [line.split(": ")[1].split()[0] for line in
                           capsys.readouterr().out.splitlines() if ".png: " in line]  # fmt: skip
    assert len(outputs["torch"]) == 20 and outputs["torch"] == outputs["onnxruntime"]
    assert cli_main(["predict", "--model", str(folder), str(cifar_samples_dir),
                     "--runtime", "torch", "--precision", "int8"]) == 1  # fmt: skip
    assert "choose runtime 'onnxruntime'" in capsys.readouterr().err
    assert (
        cli_main(["export", "--model", str(folder), "--format", "onnx", "--precision", "int8"]) == 1
    )
    assert "precision int8 needs format onnx and calibrate CONFIG" in capsys.readouterr().err

    feats = {}
    for engine in ["torch", "onnxruntime"]:
        cache = extract_features(
            None, cifar_samples_dir, tmp_path / engine,
            weights=str(folder), runtime=engine, progress=False,
        )  # fmt: skip
        feats[engine] = cache.features(cache.splits[0])
    exports = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "onnx"
    assert list(exports.glob("backbone-resnet18_cifar.*.onnx"))  # shared by every folder
    assert not list((tmp_path / "onnxruntime").glob("*.onnx"))  # the features cache: features
    torch.testing.assert_close(feats["onnxruntime"], feats["torch"], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not rt.cpu_has_bf16(), reason="this CPU has no bf16 units (AVX512-BF16/AMX)")
@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_bf16_gives_fp32s_classes_within_bf16_rounding(engine: str, tmp_path: Path) -> None:
    pytest.importorskip("openvino") if engine == "openvino" else None
    folder, model, size = saved(tmp_path, "resnet18_cifar", **TINY)
    x = torch.randn(16, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    loaded = load_model(folder, runtime=engine, precision="bf16")
    actual = loaded(x).float()
    assert loaded.engine == engine
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max() <= 0.05 * scale  # bf16 keeps 8 bits of mantissa
    assert (actual - expected).abs().max() > 0  # really computed in bf16
    assert (actual.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
