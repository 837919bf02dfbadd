"""export_model: ONNX and TorchScript files that give the eager model's logits, with a sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from moderncnn import create_model, list_models
from moderncnn.cli import main as cli_main
from moderncnn.data import FashionMNISTDataModule
from moderncnn.inference.export import ExportError, export_model, fp32_noise, verify_export
from moderncnn.inference.runtimes import load_exported, sidecar_path

FORMATS = ["onnx", "torchscript"]
# One member per family runs by default; the rest (2-20 s each on 2 shared cores: deep
# graphs to trace, 25-240 MB files to write, TorchScript's first-run graph optimisation)
# only in the full sweep (`pytest -m sweep`).
FAST = {("resnet18_cifar", "onnx"), ("resnet18_cifar", "torchscript")}
FAST |= {("googlenet_cifar", "onnx"), ("googlenet_cifar", "torchscript")}
FAST |= {("densenet121_cifar", "onnx"), ("inception_v3_cifar", "onnx")}
FAST |= {("resnet20", "onnx")}  # option A's zero padding: a slice and a pad in the graph
MODELS_AND_FORMATS = [
    (n, f) if (n, f) in FAST else pytest.param(n, f, marks=pytest.mark.sweep)
    for n in list_models()
    for f in FORMATS
]


def calibrate_batch_norms(model: nn.Module, size: tuple[int, int, int]) -> nn.Module:
    """Random BN affine parameters and running statistics measured on random images.

    Fresh running statistics (mean 0, var 1) make folding a no-op and let deep nets'
    activations grow to 1e7; measured ones behave like a trained network's.
    """
    g = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the stats of this one batch
            bn.train()  # only the BNs: the model stays in eval mode (no aux heads)
        model(torch.randn(4, *size, generator=g))
    return model.eval()


def small_size(model: nn.Module) -> tuple[int, int, int]:
    """The smallest legal input; inception_v3's 299 is for its aux head, skipped in eval."""
    c, h, w = model.min_input_size
    return (c, 75, 75) if h > 75 else (c, h, w)


def tolerance(logits: Tensor) -> float:
    # fp32 round-off scales with the logits (random weights give |logits| up to ~1e3).
    return 1e-4 * max(1.0, logits.abs().max().item())


@pytest.mark.parametrize(("name", "fmt"), MODELS_AND_FORMATS)
def test_export_matches_eager(name: str, fmt: str, tmp_path: Path) -> None:
    model = create_model(name, num_classes=5)
    size = small_size(model)
    calibrate_batch_norms(model, size)
    model.train()  # export must use eval mode and leave the caller's mode alone
    before = {k: v.clone() for k, v in model.state_dict().items()}

    out = export_model(model, tmp_path / f"{name}.{fmt}", fmt, input_size=size)

    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["format"] == fmt and meta["input_size"] == list(size) and meta["bn_folded"]
    x = torch.randn(1, *size)
    with torch.no_grad():
        expected = model.eval()(x)
    diff = verify_export(out, model, x)
    print(f"{name} {fmt} {size}: max |diff| {diff:.2e}, max |logit| {expected.abs().max():.3g}")
    # Within 1e-4 of the logits' scale, or within 4x the eager model's own fp32 error.
    assert diff <= tolerance(expected) or diff <= 4 * fp32_noise(model, x), f"{diff:.3g}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_dynamic_batch(fmt: str, tmp_path: Path) -> None:
    model = calibrate_batch_norms(create_model("resnet18_cifar", num_classes=5), (3, 16, 16))
    out = tmp_path / ("d.onnx" if fmt == "onnx" else "d.torchscript")
    dynamic = load_exported(export_model(model, out, fmt, (3, 16, 16), True))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    assert dynamic.metadata["dynamic_batch"] is True
    torch.testing.assert_close(dynamic(x), expected, rtol=0, atol=tolerance(expected))
    torch.testing.assert_close(dynamic(x[:1]), expected[:1], rtol=0, atol=tolerance(expected))
    if fmt == "onnx":  # without dynamic_batch the graph's batch dimension is fixed at 1
        static = load_exported(export_model(model, tmp_path / "s.onnx", fmt, (3, 16, 16)))
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            static(x)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    model = create_model("googlenet_cifar", num_classes=3, in_chans=1)
    names = ["cat", "dog", "ünïcode bird"]
    out = export_model(
        model, tmp_path / "g.onnx", "onnx", (1, 8, 8), class_names=names, mean=[0.5], std=[0.25]
    )
    assert sidecar_path(out) == tmp_path / "g.onnx.json"
    exported = load_exported(out)
    assert exported.class_names == names
    meta = exported.metadata
    pre = meta["card"]["preprocess"]
    assert (meta["input_size"], pre["mean"], pre["std"]) == ([1, 8, 8], [0.5], [0.25])
    assert meta["opset"] == 17 and meta["input_name"] == "images"
    assert exported(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    default = load_exported(export_model(model, tmp_path / "n.onnx", "onnx", (1, 8, 8)))
    assert default.class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="2 class names for 3 (outputs|classes)"):
        export_model(model, tmp_path / "bad.onnx", "onnx", (1, 8, 8), class_names=["a", "b"])


class TracesDifferently(nn.Module):
    """Doubles its input only while traced: what a silently wrong export looks like."""

    input_size = (3, 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) * (2.0 if torch.jit.is_tracing() else 1.0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatching_export_is_refused_and_deleted(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / ("bad.onnx" if fmt == "onnx" else "bad.torchscript")
    with pytest.raises(ExportError, match="differs from the eager model by"):
        export_model(TracesDifferently(), out, fmt, optimize=False)
    assert not out.exists() and not sidecar_path(out).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_failed_export_keeps_the_earlier_good_one(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    good = nn.Sequential(nn.Flatten())
    good.input_size = (3, 4, 4)
    export_model(good, out, "onnx", optimize=False)
    before = out.read_bytes(), sidecar_path(out).read_bytes()
    with pytest.raises(ExportError):
        export_model(TracesDifferently(), out, "onnx", optimize=False)
    assert (out.read_bytes(), sidecar_path(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_illegal_input_size_is_named(tmp_path: Path) -> None:
    model = create_model("resnet18_cifar", num_classes=5)
    with pytest.raises(ValueError, match=r"cannot run on an input of size \(1, 1, 8, 8\)"):
        export_model(model, tmp_path / "x.onnx", "onnx", input_size=(1, 8, 8))
    with pytest.raises(ValueError, match="three positive ints"):
        export_model(model, tmp_path / "x.onnx", "onnx", input_size=(3, 8))  # type: ignore[arg-type]


def test_cli_exports_lightning_checkpoint(tmp_path: Path) -> None:
    model = create_model("resnet18_cifar", num_classes=10, in_chans=1).eval()
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["test_confusion.confmat"] = torch.zeros(10, 10)  # not the network's: left out
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {
                "model": "resnet18_cifar",
                "num_classes": 10,
                "in_chans": 1,
                # linked from the data module by the CLI
                "class_names": FashionMNISTDataModule.class_names,
                "preprocess": {
                    "image_size": 28,
                    "resize_size": None,
                    "mean": [0.286],
                    "std": [0.353],
                },
            },
        },
        ckpt,
    )
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx", "--dynamic_batch"]) == 0

    exported = load_exported(tmp_path / "last.onnx")
    assert exported.class_names == FashionMNISTDataModule.class_names
    meta = exported.metadata
    assert meta["model"] == "resnet18_cifar" and meta["input_size"] == [1, 28, 28]
    pre = meta["card"]["preprocess"]
    assert pre["mean"] == pytest.approx([0.2860]) and pre["std"] == pytest.approx([0.3530])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=tolerance(expected))


def test_cli_exports_state_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    model = create_model("resnet18_cifar", num_classes=4).eval()
    weights = tmp_path / "r.safetensors"
    save_file(model.state_dict(), weights)
    assert cli_main(["export", "--model", str(weights), "--format", "torchscript"]) == 1
    assert "--model NAME --num-classes N" in capsys.readouterr().err

    out = tmp_path / "out" / "r.torchscript"
    argv = ["export", "--model", str(weights), "--format", "torchscript", "--out", str(out)]
    argv += ["--arch", "resnet18_cifar", "--num_classes", "4", "--input_size", "3", "8", "8"]
    assert cli_main(argv) == 0
    exported = load_exported(out)
    assert exported.metadata["format"] == "torchscript"
    assert exported.class_names == [f"class_{i}" for i in range(4)]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-4)
    # A state dict of another width is refused with the model named.
    argv[argv.index("4")] = "7"
    assert cli_main(argv) == 1
    assert "do not fit the resnet18_cifar(num_classes=7" in capsys.readouterr().err


def test_cli_reads_image_classifier_hparams(tmp_path: Path) -> None:
    from moderncnn.training.module import ImageClassifier

    preprocess = {"image_size": 16, "resize_size": None, "mean": [0.5] * 3, "std": [0.25] * 3}
    module = ImageClassifier("resnet18_cifar", num_classes=3, class_names=["a", "b", "c"])
    module.hparams.preprocess = preprocess  # what ImageClassifier.setup records from the data
    ckpt = tmp_path / "ic.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx"]) == 0

    exported = load_exported(tmp_path / "ic.onnx")
    meta = exported.metadata
    assert exported.class_names == ["a", "b", "c"] and meta["input_size"] == [3, 16, 16]
    pre = meta["card"]["preprocess"]
    assert (pre["mean"], pre["std"]) == (preprocess["mean"], preprocess["std"])
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = module.model.eval()(x)
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=tolerance(expected))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["batch1", "dynamic"])
def test_exported_model_predicts_images_like_its_checkpoint(
    fmt: str, dynamic: bool, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    # `moderncnn export`, then `moderncnn predict --checkpoint model.onnx FILES`: the same top
    # classes and probabilities as predicting from the .ckpt, names from the JSON sidecar.
    from moderncnn.inference import predict
    from moderncnn.training.module import ImageClassifier

    preprocess = {"image_size": 32, "resize_size": None, "mean": [0.49, 0.48, 0.45]}
    preprocess["std"] = [0.25, 0.24, 0.26]
    names = ["plane", "car", "bird", "cat"]
    module = ImageClassifier(
        "resnet18_cifar", num_classes=4, class_names=names, model_kwargs={"channels": [8, 16],
        "layers": [1, 1]}, preprocess=preprocess,
    )  # fmt: skip
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    out = tmp_path / f"run{'.onnx' if fmt == 'onnx' else '.torchscript'}"
    argv = ["export", "--model", str(ckpt), "--format", fmt, "--out", str(out)]
    assert cli_main(argv + (["--dynamic_batch"] if dynamic else [])) == 0

    images = sorted(cifar_samples_dir.glob("*.png"))[:5]
    assert cli_main(["predict", "--model", str(out), *map(str, images), "--topk", "2"]) == 0
    printed = capsys.readouterr().out
    assert "5 images classified, 0 unreadable" in printed
    exported = predict(images, out, topk=2, batch_size=4)
    eager = predict(images, ckpt, topk=2, batch_size=4)
    assert [p.classes for p in exported] == [p.classes for p in eager]
    assert all(set(p.classes) <= set(names) for p in exported)
    torch.testing.assert_close(
        torch.tensor([p.probabilities for p in exported]),
        torch.tensor([p.probabilities for p in eager]),
        rtol=0,
        atol=1e-4,
    )
    assert f"{images[0]}: {exported[0].classes[0]} " in printed


def test_exported_model_without_its_sidecar_is_named(cifar_samples_dir: Path, tmp_path: Path):
    from moderncnn.inference import predict

    model = create_model("resnet18_cifar", num_classes=3, channels=[8], layers=[1])
    out = export_model(model, tmp_path / "m.onnx", "onnx", class_names=["a", "b", "c"])
    sidecar_path(out).unlink()
    with pytest.raises(
        FileNotFoundError, match=r"m\.onnx\.json not found: m\.onnx's card \(class names"
    ):
        predict(cifar_samples_dir, out)


# -- `moderncnn export` checks everything before it writes anything (issue 23) -------------------

TINY = {"channels": [8, 16], "layers": [1, 1]}
GREY28 = {"image_size": 28, "resize_size": None, "mean": [0.286], "std": [0.353]}
RGB28 = {"image_size": 28, "resize_size": None, "mean": [0.5] * 3, "std": [0.25] * 3}


def tiny_checkpoint(path: Path, in_chans: int = 1) -> Path:
    from moderncnn.training.module import ImageClassifier

    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=in_chans, model_kwargs=TINY,
        preprocess=GREY28 if in_chans == 1 else RGB28,
    )  # fmt: skip
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    torch.save(saved, path)
    return path


def fashion_config(tmp_path: Path, fashion_mnist_dir: Path, val_size: int = 256) -> Path:
    import yaml

    data = {
        "class_path": "moderncnn.data.FashionMNISTDataModule",
        "init_args": {"data_dir": str(fashion_mnist_dir), "batch_size": 64,
                      "train_subset": 512, "val_size": val_size},
    }  # fmt: skip
    path = tmp_path / f"fashion{val_size}.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_an_export_named_like_its_checkpoint_is_refused_and_the_checkpoint_kept(
    tmp_path: Path, capsys
) -> None:
    # H8: `export CK --format onnx -o CK` replaced the training checkpoint with an ONNX file.
    ckpt = tiny_checkpoint(tmp_path / "run.ckpt")
    before = ckpt.read_bytes()
    for fmt in FORMATS:
        assert cli_main(["export", "--model", str(ckpt), "--format", fmt, "--out", str(ckpt)]) == 1
        err = capsys.readouterr().err
        assert "export is written to a file ending in" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_safetensors_export_never_writes_into_a_folder_of_other_files(
    tmp_path: Path, capsys
) -> None:
    # L2: `export --format safetensors -o proj/` replaced the project's own config.json.
    ckpt = tiny_checkpoint(tmp_path / "run.ckpt")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    argv = ["export", "--model", str(ckpt), "--format", "safetensors", "--out"]
    assert cli_main([*argv, str(project)]) == 1
    err = capsys.readouterr().err
    assert "proj is a folder of other files, not a saved model" in err
    assert (project / "config.json").read_text() == '{"name": "my project"}'
    assert sorted(p.name for p in project.iterdir()) == ["config.json"]
    assert cli_main([*argv, str(ckpt)]) == 1  # a file
    assert "is a file; a saved model is a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "new", "new"):  # an empty folder, a new one, our own again
        assert cli_main([*argv, str(tmp_path / folder)]) == 0
    assert (tmp_path / "new" / "model.safetensors").is_file()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_non_finite_max_drop_is_refused_before_anything_is_written(
    tmp_path: Path, bad: str, capsys
) -> None:
    # L3: NaN compares false with everything, so the accuracy guard let any int8 model pass.
    from moderncnn.inference.quantize import quantize_export

    ckpt = tiny_checkpoint(tmp_path / "run.ckpt")
    argv = [
        "export",
        "--model",
        str(ckpt),
        "--format",
        "onnx",
        "--precision",
        "int8",
        "--calibrate",
        "c.yaml",
    ]
    # jsonargparse refuses nan as a float (does not parse: 2); inf reaches our check (1)
    assert cli_main([*argv, f"--max_drop={bad}"]) in (1, 2)
    err = capsys.readouterr().err
    assert "max_drop" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
    with pytest.raises(ValueError, match="finite number"):
        quantize_export(tmp_path / "x.onnx", tmp_path / "y.onnx", [], list, max_drop=float(bad))


def test_int8_calibration_refusals_leave_the_earlier_export_as_it_was(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    # M10, L10: the fp32 run.onnx was overwritten before the config was read and checked.
    config = fashion_config(tmp_path, fashion_mnist_dir)
    for in_chans, calibrate, message in [
        (1, str(tmp_path / "missing.yaml"), "missing.yaml does not exist"),
        (3, str(config), "its train images are (1, 28, 28) but "),
        (1, str(fashion_config(tmp_path, fashion_mnist_dir, val_size=5000)), "leaves no training"),
    ]:
        ckpt = tiny_checkpoint(tmp_path / "run.ckpt", in_chans)
        earlier = ckpt.with_suffix(".onnx")
        earlier.write_bytes(b"an earlier export")
        argv = [
            "export",
            "--model",
            str(ckpt),
            "--format",
            "onnx",
            "--precision",
            "int8",
            "--calibrate",
            calibrate,
        ]
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert earlier.read_bytes() == b"an earlier export"
        assert not sidecar_path(earlier).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_calibration_batches_are_the_same_every_run(fashion_mnist_dir: Path) -> None:
    # L3: the shuffled training split gave other calibration images, so another int8 accuracy,
    # on every run.
    from moderncnn.inference.quantize import datamodule_batches

    data = FashionMNISTDataModule(
        str(fashion_mnist_dir), batch_size=32, train_subset=256, val_size=64
    )
    state = torch.random.get_rng_state()
    first, second = (next(datamodule_batches(data, "train", seed=0))[1] for _ in range(2))
    assert torch.equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    other = next(datamodule_batches(data, "train", seed=1))[1]
    assert not torch.equal(first, other)


@pytest.mark.slow
def test_int8_export_writes_both_files_and_the_same_model_every_run(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    from moderncnn.inference import load_model

    pytest.importorskip("onnxruntime")
    ckpt = tiny_checkpoint(tmp_path / "run.ckpt")
    argv = [
        "export",
        "--model",
        str(ckpt),
        "--format",
        "onnx",
        "--precision",
        "int8",
        "--calibrate",
    ]
    argv += [str(fashion_config(tmp_path, fashion_mnist_dir)), "--force"]
    metrics = []
    for _ in range(2):
        assert cli_main(argv) == 0, capsys.readouterr().err
        assert "run.int8.onnx: int8 val accuracy" in capsys.readouterr().out
        metrics.append(json.loads(sidecar_path(tmp_path / "run.int8.onnx").read_text())["card"])
    assert metrics[0]["metrics"] == metrics[1]["metrics"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    int8 = load_model(ckpt, runtime="onnxruntime", precision="int8")
    assert int8(torch.randn(2, 1, 28, 28)).shape == (2, 10)
