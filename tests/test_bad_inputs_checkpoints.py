"""Bad checkpoints: truncated, for another architecture or class count, or a pickle that would
run code. Each is refused with a message naming the file, through every door a checkpoint comes
in by: ``create_model(weights=...)``, ``fit/test --ckpt_path``, ``predict --checkpoint`` and
``export``; nothing in the file is executed and nothing already written is touched.

More cases of ``load_pretrained`` (wrappers, key renames, torchvision files): tests/transfer/
test_weights.py.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from moderncnn.cli import main as moderncnn_main
from moderncnn.io.checkpoint import CheckpointError
from moderncnn.models import create_model
from moderncnn.training.cli import main
from moderncnn.training.module import ImageClassifier

MODEL_KWARGS = {"channels": [8, 16], "layers": [1, 1]}


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: the attack ``weights_only=True`` stops."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def lightning_checkpoint(path: Path, num_classes: int = 10, channels=(8, 16), **extra) -> Path:
    """A checkpoint laid out as `moderncnn fit` writes it (state dict + hyperparameters)."""
    kwargs = {"channels": list(channels), "layers": [1, 1]}
    module = ImageClassifier(
        "resnet18_cifar", num_classes=num_classes, in_chans=1, model_kwargs=kwargs
    )
    hparams = dict(module.hparams) | {
        "preprocess": {"image_size": 28, "resize_size": None, "mean": [0.3], "std": [0.35]}
    }
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, **extra}, path)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = lightning_checkpoint(tmp_path / "good.ckpt")
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    marker = tmp_path / "code_ran"
    lightning_checkpoint(tmp_path / "evil.ckpt", extra_object=RunsCode(marker))
    return {
        "good": good,
        "truncated": tmp_path / "truncated.ckpt",
        "evil": tmp_path / "evil.ckpt",
        "marker": marker,
        "other_arch": lightning_checkpoint(tmp_path / "wide.ckpt", channels=(16, 32)),
        "other_classes": lightning_checkpoint(tmp_path / "five.ckpt", num_classes=5),
    }


# -- create_model(weights=...) ----------------------------------------------------------------


def test_weights_truncated_or_code_are_refused(files: dict[str, Path]) -> None:
    build = {"num_classes": 10, "in_chans": 1, **MODEL_KWARGS}
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: the file is truncated or corrupt"):
        create_model("resnet18_cifar", weights=str(files["truncated"]), **build)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: it holds pickled Python objects"):
        create_model("resnet18_cifar", weights=str(files["evil"]), **build)
    assert not files["marker"].exists()


def test_weights_of_another_architecture_are_refused(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"wide\.ckpt.*does not fit resnet18_cifar"):
        create_model("resnet18_cifar", weights=str(files["other_arch"]), in_chans=1, **MODEL_KWARGS)


def test_weights_of_another_class_count_keep_a_fresh_head(files: dict[str, Path], caplog) -> None:
    # Transfer learning: the backbone loads, the classifier of the new class count stays fresh.
    model = create_model(
        "resnet18_cifar", num_classes=10, in_chans=1, weights=str(files["other_classes"]),
        **MODEL_KWARGS,
    )  # fmt: skip
    saved = torch.load(files["other_classes"], weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, saved["model.conv1.weight"])
    assert model.fc.out_features == 10


# -- moderncnn fit/test --ckpt_path ---------------------------------------------------------------


def fit_config(tmp_path: Path, fashion_mnist_dir: Path) -> Path:
    config = {
        "model": {"model": "resnet18_cifar", "model_kwargs": MODEL_KWARGS},
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {"data_dir": str(fashion_mnist_dir), "batch_size": 64},
        },
        "trainer": {"max_epochs": 1, "enable_progress_bar": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated", "truncated.ckpt: the file is truncated or corrupt"),
        ("evil", "evil.ckpt: it holds pickled Python objects"),
        ("other_arch", "wide.ckpt does not fit this config's model: model_kwargs="),
        (
            "other_classes",
            "five.ckpt does not fit this config's model: num_classes=5 (this config: 10)",
        ),
        ("missing", "--ckpt_path '"),
    ],
)
@pytest.mark.parametrize("command", ["fit", "test"])
def test_ckpt_path_is_checked_before_the_run_starts(
    command: str, name: str, message: str, files, fashion_mnist_dir, tmp_path, monkeypatch, capsys
) -> None:
    config = fit_config(tmp_path, fashion_mnist_dir)
    earlier = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "last.ckpt").write_bytes(b"an earlier run's")
    monkeypatch.chdir(tmp_path)
    ckpt = files.get(name, tmp_path / "missing.ckpt")
    assert moderncnn_main([command, "-c", str(config), "--ckpt_path", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not files["marker"].exists()
    # No new run folder, and the earlier run's checkpoint as it was.
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    assert (earlier / "last.ckpt").read_bytes() == b"an earlier run's"


# -- moderncnn predict --checkpoint and moderncnn export ------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated", "truncated.ckpt: the file is truncated or corrupt"),
        ("evil", "evil.ckpt: it holds pickled Python objects"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_predict_and_export_refuse_bad_checkpoints(
    command: str, name: str, message: str, files, cifar_samples_dir: Path, tmp_path, capsys
) -> None:
    image = str(next(cifar_samples_dir.glob("*.png")))
    args = {
        "predict": ["predict", "--model", str(files[name]), image],
        "export": [
            "export",
            "--model",
            str(files[name]),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
    }[command]
    assert moderncnn_main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not files["marker"].exists() and not (tmp_path / "m.onnx").exists()


def test_predict_refuses_weights_that_do_not_fit_their_hyperparameters(
    files, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    # A checkpoint whose state dict was swapped for another network's.
    good = torch.load(files["good"], weights_only=True)
    wide = torch.load(files["other_arch"], weights_only=True)
    torch.save({**good, "state_dict": wide["state_dict"]}, tmp_path / "swapped.ckpt")
    image = str(next(cifar_samples_dir.glob("*.png")))
    args = ["predict", "--model", str(tmp_path / "swapped.ckpt"), image]
    assert moderncnn_main(args) == 1
    err = capsys.readouterr().err
    assert "swapped.ckpt: its weights do not fit the resnet18_cifar" in err
    assert "Traceback" not in err


def test_good_checkpoint_predicts(files, cifar_samples_dir: Path, capsys) -> None:
    # The fixture's checkpoints are real: the refusals above are about the files' faults.
    image = str(next(cifar_samples_dir.glob("*.png")))
    assert moderncnn_main(["predict", "--model", str(files["good"]), image]) == 0
    assert "1 images classified, 0 unreadable" in capsys.readouterr().out


# -- issue #12: empty and text files, a corrupt last.ckpt, resuming with other settings -------

# What the file holds, and what the one-line message says (besides its name).
NOT_CHECKPOINTS = {
    "empty": (b"", "empty.ckpt: the file is empty (0 bytes)"),
    "text": (b"model: resnet18\nepochs: 3\n", "text.ckpt: it is not a readable PyTorch check"),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
@pytest.mark.parametrize("door", ["fit", "test", "weights", "create_model"])
def test_empty_or_text_file_as_a_checkpoint_is_one_message(
    kind: str, door: str, fashion_mnist_dir, tmp_path: Path, monkeypatch, capsys
) -> None:
    data, message = NOT_CHECKPOINTS[kind]
    ckpt = tmp_path / f"{kind}.ckpt"
    ckpt.write_bytes(data)
    if door == "create_model":
        with pytest.raises(CheckpointError) as err:
            create_model("resnet18_cifar", weights=str(ckpt), in_chans=1, **MODEL_KWARGS)
        assert message in str(err.value)
        return
    config = fit_config(tmp_path, fashion_mnist_dir)
    monkeypatch.chdir(tmp_path)
    args = {
        "fit": ["fit", "-c", str(config), "--ckpt_path", str(ckpt)],
        "test": ["test", "-c", str(config), "--ckpt_path", str(ckpt)],
        "weights": [
            "fit", "-c", str(config),
            "--model.model_kwargs", yaml.safe_dump({**MODEL_KWARGS, "weights": str(ckpt)}),
        ],
    }[door]  # fmt: skip
    assert moderncnn_main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_predict_and_export_refuse_empty_or_text_files(
    command: str, kind: str, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    data, message = NOT_CHECKPOINTS[kind]
    ckpt = tmp_path / f"{kind}.ckpt"
    ckpt.write_bytes(data)
    args = _command_line(command, ckpt, cifar_samples_dir, tmp_path)
    assert moderncnn_main(args) == 1
    err = capsys.readouterr().err
    assert kind in err and "Traceback" not in err, err


def quick_fit_config(fashion_mnist_dir: Path, **model) -> dict:
    return {
        "seed_everything": 1,
        "model": {"model": "resnet18_cifar", "model_kwargs": MODEL_KWARGS, "lr": 0.05, **model},
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {
                "data_dir": str(fashion_mnist_dir),
                "batch_size": 16,
                "train_subset": 64,
                "val_size": 16,
            },
        },
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }


def run_in(workdir: Path, config: dict, *args: str) -> int:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        return main([args[0], "-c", "config.yaml", *args[1:]])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fashion_mnist_dir_module) -> Path:
    """A folder with one finished run (version_0) of :func:`quick_fit_config`, step schedule."""
    work = tmp_path_factory.mktemp("trained")
    config = quick_fit_config(fashion_mnist_dir_module, scheduler="step")
    assert run_in(work, config, "fit") == 0
    return work


@pytest.fixture(scope="module")
def fashion_mnist_dir_module() -> Path:
    path = Path("/usr/share/datasets/fashion-mnist")
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (scripts/setup.sh)")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("override", "differs"),
    [
        (["--model.lr=0.01"], "model.lr: 0.05 in the checkpoint, 0.01 now"),
        (["--model.optimizer=adam"], "model.optimizer: 'sgd' in the checkpoint, 'adam' now"),
        (["--model.scheduler=cosine"], "model.scheduler: 'step' in the checkpoint, 'cosine' now"),
        (
            ["--model.lr=0.01", "--model.weight_decay=0"],
            "model.lr: 0.05 in the checkpoint, 0.01 now; model.weight_decay: 0.0005",
        ),
    ],
)
def test_resuming_with_other_settings_is_refused_before_anything_is_written(
    override: list[str], differs: str, trained_run: Path, fashion_mnist_dir_module, capsys
) -> None:
    before = snapshot(trained_run)
    config = quick_fit_config(fashion_mnist_dir_module, scheduler="step")
    assert run_in(trained_run, config, "fit", "--ckpt_path", "last", *override) == 1
    err = capsys.readouterr().err
    assert "this config differs from the run it would resume in" in err
    assert differs in err and "Traceback" not in err and "KeyError" not in err
    assert snapshot(trained_run) == before  # no version_1, nothing touched


def test_resuming_with_the_same_settings_and_other_speed_switches_trains(
    trained_run: Path, fashion_mnist_dir_module, tmp_path: Path
) -> None:
    work = tmp_path / "copy"
    shutil.copytree(trained_run, work)
    config = quick_fit_config(fashion_mnist_dir_module, scheduler="step")
    config["trainer"]["max_epochs"] = 2
    args = ("fit", "--ckpt_path", "last", "--model.channels_last=false")
    assert run_in(work, config, *args) == 0
    assert (work / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt").is_file()


def test_test_best_with_a_corrupt_last_checkpoint_names_it(
    trained_run: Path, fashion_mnist_dir_module, tmp_path: Path, capsys
) -> None:
    work = tmp_path / "copy"
    shutil.copytree(trained_run, work)
    last = work / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    config = quick_fit_config(fashion_mnist_dir_module, scheduler="step")
    assert run_in(work, config, "test", "--ckpt_path", "best") == 1
    err = capsys.readouterr().err
    assert f"--ckpt_path best: the best checkpoint is recorded in {last.relative_to(work)}" in err
    assert "which cannot be read" in err and "best-epoch=0" in err and "Traceback" not in err
    assert sorted(p.name for p in (work / "lightning_logs").iterdir()) == ["version_0"]


@pytest.mark.parametrize("topk", ["-3", "0"])
def test_predict_topk_below_one_is_one_message(
    topk: str, files, cifar_samples_dir: Path, capsys
) -> None:
    image = str(next(cifar_samples_dir.glob("*.png")))
    args = ["predict", "--model", str(files["good"]), image, "--topk", topk]
    assert moderncnn_main(args) == 1
    err = capsys.readouterr().err
    assert f"topk must be a positive int, got {topk}" in err and "Traceback" not in err


# What a checkpoint's hyperparameters hold (edited, or written by another version), and what
# predict/export say; an unknown key outside model_kwargs (an optimiser setting) is ignored.
def _command_line(command: str, ckpt: Path, images: Path, tmp_path: Path) -> list[str]:
    """``predict`` of one image, or ``export`` to ONNX, of ``ckpt``."""
    image = str(next(images.glob("*.png")))
    return {
        "predict": ["predict", "--model", str(ckpt), image],
        "export": [
            "export",
            "--model",
            str(ckpt),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
    }[command]


ODD_HYPERPARAMETERS = {
    "unknown argument": (
        {"channels": [8, 16], "layers": [1, 1], "frobnicate": 3},
        "got an unexpected keyword argument 'frobnicate'",
    ),
    "a number for a list": ({"channels": 8, "layers": [1]}, "object of type 'int' has no len()"),
    "a network for hours": (
        {"channels": [8], "layers": [1_000_000]},
        "model.model_kwargs.layers asks for 1000000 units in all",
    ),
}


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize("case", sorted(ODD_HYPERPARAMETERS))
def test_unknown_hyperparameters_in_a_checkpoint_are_one_message(
    command: str, case: str, files, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    model_kwargs, reason = ODD_HYPERPARAMETERS[case]
    saved = torch.load(files["good"], weights_only=True)
    hparams = saved["hyper_parameters"] | {"model_kwargs": model_kwargs}
    ckpt = tmp_path / "odd.ckpt"
    torch.save({**saved, "hyper_parameters": hparams}, ckpt)
    args = _command_line(command, ckpt, cifar_samples_dir, tmp_path)
    assert moderncnn_main(args) == 1  # at once: `layers: [1000000]` is refused, not built
    err = capsys.readouterr().err
    assert f"odd.ckpt: its model_kwargs {model_kwargs!r} do not fit resnet18_cifar" in err
    assert reason in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_unknown_hyperparameters_outside_model_kwargs_are_ignored(
    command: str, files, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    saved = torch.load(files["good"], weights_only=True)
    hparams = saved["hyper_parameters"] | {"frobnicate": 3, "optimizer": "lion"}
    ckpt = tmp_path / "newer.ckpt"
    torch.save({**saved, "hyper_parameters": hparams}, ckpt)
    args = _command_line(command, ckpt, cifar_samples_dir, tmp_path)
    assert moderncnn_main(args) == 0, capsys.readouterr().err


# -- issue #12, item 3: the documented Python API never runs pickled code -------------------


@pytest.mark.parametrize("door", ["https", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_load_from_checkpoint_refuses_pickled_code_by_url_and_under_the_env_override(
    door: str, files, tmp_path: Path, monkeypatch
) -> None:
    # Lightning's own loader uses weights_only=False for both: the marker file would appear.
    if door == "https":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        cached = tmp_path / "torch" / "hub" / "checkpoints" / "evil.ckpt"  # "downloaded" already
        cached.parent.mkdir(parents=True)
        shutil.copy(files["evil"], cached)
        source = "https://example.com/models/evil.ckpt"
    else:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        source = str(files["evil"])
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: it holds pickled Python objects"):
        ImageClassifier.load_from_checkpoint(source)
    assert not files["marker"].exists()


def test_load_from_checkpoint_refuses_plain_http(files) -> None:
    from moderncnn.io.errors import ConfigError

    with pytest.raises(ConfigError, match="weights URL must be https://"):
        ImageClassifier.load_from_checkpoint("http://example.com/models/good.ckpt")


def test_load_from_checkpoint_of_a_good_file_under_the_env_override(files, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    module = ImageClassifier.load_from_checkpoint(files["good"])
    assert module.hparams.model_kwargs == MODEL_KWARGS and not module.training


# -- issue #12, item 11: class names a spreadsheet would run ----------------------------------


def test_predict_csv_quotes_class_names_a_spreadsheet_would_run(
    files, cifar_samples_dir: Path, tmp_path: Path, capsys
) -> None:
    names = ['=HYPERLINK("http://evil","x")', "+1", "-2", "@SUM(A1)", "$x$", *"abcde"]
    saved = torch.load(files["good"], weights_only=True)
    ckpt = tmp_path / "hostile.ckpt"
    torch.save(
        {**saved, "hyper_parameters": saved["hyper_parameters"] | {"class_names": names}}, ckpt
    )
    image = str(next(cifar_samples_dir.glob("*.png")))
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(ckpt), image, "--topk", "10", "--out", str(out)]
    assert moderncnn_main(args) == 0, capsys.readouterr().err
    rows = list(csv.reader(out.read_text().splitlines()))
    cells = [cell for row in rows[1:] for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), cells
    assert {row[2] for row in rows[1:]} >= {'\'=HYPERLINK("http://evil","x")', "'+1", "$x$"}


# -- weights that load but are not numbers a network can use (issue 23, L7, L8) ---------------


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda t: t.fill_(float("nan")), "'fc.bias' holds NaN or infinite values"),
        (lambda t: t.fill_(float("inf")), "'fc.bias' holds NaN or infinite values"),
        (lambda t: t.long(), "'fc.bias' is torch.int64, not floating point"),
        (lambda t: t > 0, "'fc.bias' is torch.bool, not floating point"),
    ],
    ids=["nan", "inf", "int64", "bool"],
)
def test_non_finite_or_integer_weights_are_refused_naming_the_key(
    files, tmp_path: Path, capsys, spoil, message: str
) -> None:
    # load_state_dict casts them silently: predictions read `nan%` and the exit status is 0.
    checkpoint = torch.load(files["good"], weights_only=True)
    checkpoint["state_dict"]["model.fc.bias"] = spoil(checkpoint["state_dict"]["model.fc.bias"])
    torch.save(checkpoint, tmp_path / "spoilt.ckpt")
    args = ["export", "--model", str(tmp_path / "spoilt.ckpt"), "--format", "onnx"]
    assert moderncnn_main([*args, "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert f"spoilt.ckpt: weight {message}" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_state_dict_of_thousands_of_other_keys_is_named_in_a_short_line(
    files, tmp_path: Path, capsys
) -> None:
    checkpoint = torch.load(files["good"], weights_only=True)
    # A deep network's state dict under a small network's card: load_state_dict's message
    # lists every key (266 KB in one line for an Inception).
    checkpoint["state_dict"] = {f"model.block{i}.conv.weight": torch.zeros(1) for i in range(3000)}
    torch.save(checkpoint, tmp_path / "deep.ckpt")
    args = ["export", "--model", str(tmp_path / "deep.ckpt"), "--format", "onnx"]
    assert moderncnn_main([*args, "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "deep.ckpt: its weights do not fit the resnet18_cifar" in err
    assert "unexpected keys 'block0.conv.weight'," in err and "and 2995 more" in err
    assert len(err) < 1500 and len(err.strip().splitlines()) == 1
