"""`moderncnn fit|test` end to end on real Fashion-MNIST (tiny model and subset), and configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from moderncnn.models import create_model
from moderncnn.training.cli import build_cli, main
from moderncnn.training.module import ImageClassifier
from moderncnn.viz import read_metrics

REPO = Path(__file__).resolve().parents[2]
# The GPU recipes build full-size networks (seconds each on 2 cores); the quickstart's is tiny.
# Whole training configs; configs/presets/ holds additions for a second -c, run with a recipe
# by tests/training/test_config_commands.py.
CONFIGS = [
    pytest.param(path, marks=[] if path.name == "quickstart.yaml" else [pytest.mark.slow])
    for path in sorted((REPO / "configs").rglob("*.yaml"))
    if "presets" not in path.relative_to(REPO / "configs").parts
]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py

EPOCH_METRICS = {"train_loss", "train_acc", "train_acc_top5", "val_loss", "val_acc", "val_acc_top5"}
TEST_METRICS = {"test_loss", "test_acc", "test_acc_top5"}


def tiny_config(scheduler: str = "onecycle") -> dict:
    """Two epochs of a 2-stage, 8/16-channel ResNet on 512 training images: seconds on a CPU."""
    return {
        "seed_everything": 7,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16], "layers": [1, 1]},
            "lr": 0.05,
            "scheduler": scheduler,
            "step_size": 1,
            "gamma": 0.5,
        },
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {
                "data_dir": str(FASHION_MNIST_DIR),
                "batch_size": 64,
                "train_subset": 512,
                "val_size": 128,
            },
        },
        "trainer": {
            "max_epochs": 2,
            "limit_test_batches": 4,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }


def run_cli(workdir: Path, config: dict, *args: str) -> int:
    """``moderncnn <args> -c <config>`` run in ``workdir`` (where it writes lightning_logs/)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        return main([args[0], "-c", str(path), *args[1:]])
    finally:
        os.chdir(cwd)


def fit(workdir: Path, config: dict, *extra: str) -> Path:
    """Runs `moderncnn fit`; returns the run folder it made."""
    before = set(workdir.glob("lightning_logs/version_*"))
    assert run_cli(workdir, config, "fit", *extra) == 0
    (run,) = set(workdir.glob("lightning_logs/version_*")) - before
    return run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    return fit(tmp_path_factory.mktemp("smoke"), tiny_config() | {"test_after_fit": True})


def offline_overrides(config: Path, elsewhere: Path) -> list[str]:
    """What a config needs from its user to build offline, made in ``elsewhere``: an image
    folder for ``root: ...`` to edit, a local file for ``weights: imagenet`` (a download)."""
    values = yaml.safe_load(config.read_text())
    args = []
    if values["data"]["class_path"].endswith("ImageFolderDataModule"):
        for label in ("cat", "dog"):  # two classes of two 8 x 8 PNG files
            folder = elsewhere / "images" / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(folder / f"{i}.png")
        args += ["--data.init_args.root", str(elsewhere / "images")]
    kwargs = values["model"].get("model_kwargs") or {}
    if kwargs.get("weights") == "imagenet":
        backbone = create_model(values["model"]["model"])
        backbone.reset_classifier(0)  # a backbone-only file: the head stays fresh, no warning
        torch.save(backbone.state_dict(), elsewhere / "backbone.pth")
        weights = {**kwargs, "weights": str(elsewhere / "backbone.pth")}
        args += ["--model.model_kwargs", json.dumps(weights)]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_config_instantiates(
    config: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> None:
    args = offline_overrides(config, tmp_path_factory.mktemp("user_files"))
    monkeypatch.chdir(tmp_path)  # no data here: building the classes must not load any
    cli = build_cli(["-c", str(config), *args], run=False)
    data = cli.datamodule
    assert cli.model.hparams.num_classes == data.num_classes == len(data.class_names)
    assert cli.model.hparams.in_chans == data.in_chans
    assert cli.model.hparams.model == yaml.safe_load(config.read_text())["model"]["model"]
    assert not list(tmp_path.iterdir())  # nor write anything


@pytest.mark.slow
def test_fit_and_test_write_a_complete_run_folder(smoke_run: Path) -> None:
    assert smoke_run.parent.name == "lightning_logs"
    epochs = read_metrics(smoke_run / "metrics.csv")
    assert EPOCH_METRICS <= set(epochs[0]) and EPOCH_METRICS <= set(epochs[1])
    # test_after_fit logs into the same run, at the epoch count the fit ended with.
    assert sorted(epochs) == [0, 1, 2] and set(epochs[2]) == TEST_METRICS
    assert all(0 <= epochs[1][name] <= 1 for name in ("val_acc", "train_acc_top5"))
    assert 0 <= epochs[2]["test_acc"] <= epochs[2]["test_acc_top5"] <= 1
    # One folder holds everything: checkpoints, TensorBoard events, plots and reports.
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert list((smoke_run / "checkpoints").glob("best-epoch=*-val_acc=*.ckpt"))
    assert list(smoke_run.glob("events.out.tfevents.*"))
    assert "resnet18_cifar" in (smoke_run / "config.yaml").read_text()
    assert (smoke_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (smoke_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (smoke_run / "per_class_accuracy.csv").read_text().splitlines()
    assert rows[0] == "class,images,correct,accuracy" and rows[1].startswith("T-shirt/top,")
    assert sum(int(row.split(",")[-3]) for row in rows[1:]) == 4 * 64  # limit_test_batches


@pytest.mark.slow
def test_load_from_checkpoint_rebuilds_the_model(smoke_run: Path) -> None:
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    module = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert module.hparams.class_names[0] == "T-shirt/top" and module.hparams.in_chans == 1
    assert module.hparams.preprocess == {
        "image_size": 28, "resize_size": None, "mean": [0.286], "std": [0.353]
    }  # fmt: skip
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    rebuilt = ImageClassifier(**module.hparams).eval()
    rebuilt.load_state_dict(state)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(module(x), rebuilt(x))
        assert not torch.allclose(module(x), ImageClassifier(**module.hparams).eval()(x))


@pytest.mark.slow
def test_same_seed_same_metrics(smoke_run: Path, tmp_path: Path) -> None:
    again = fit(tmp_path, tiny_config() | {"test_after_fit": True})
    assert read_metrics(again / "metrics.csv") == read_metrics(smoke_run / "metrics.csv")


@pytest.mark.slow
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    # A step schedule does not depend on max_epochs, so a 1-epoch run can be continued to 2.
    config = tiny_config(scheduler="step")
    whole = read_metrics(fit(tmp_path / "whole", config) / "metrics.csv")
    one = config | {"trainer": config["trainer"] | {"max_epochs": 1}}
    first = fit(tmp_path / "parts", one)
    assert sorted(read_metrics(first / "metrics.csv")) == [0]
    resumed = fit(tmp_path / "parts", config, "--ckpt_path", "last")
    second = read_metrics(resumed / "metrics.csv")
    assert sorted(second) == [1]  # the resumed run starts at epoch 1 ...
    assert second[1] == whole[1]  # ... and repeats the uninterrupted run's epoch exactly
    assert (resumed / "curves.png").is_file()


@pytest.mark.slow
def test_resuming_a_schedule_planned_for_other_limits_is_refused(
    smoke_run: Path, tmp_path: Path, capsys
) -> None:
    # The smoke run's one-cycle schedule spans 2 epochs; stretching it to 3 cannot be resumed.
    config = tiny_config() | {"trainer": tiny_config()["trainer"] | {"max_epochs": 3}}
    ckpt = str(smoke_run / "checkpoints" / "last.ckpt")
    assert run_cli(tmp_path, config, "fit", "--ckpt_path", ckpt) == 1
    err = capsys.readouterr().err
    assert "the checkpoint's 'onecycle' schedule spans 12 steps but this run has 18" in err


# Config mistakes (unknown keys, wrong types, bad values and names):
# tests/test_bad_inputs_configs.py


def test_test_without_an_earlier_run_says_what_to_do(tmp_path: Path, capsys) -> None:
    assert run_cli(tmp_path, tiny_config(), "test", "--ckpt_path", "best") == 1
    assert "no lightning_logs/*/checkpoints/last.ckpt; train with `fit` first" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_plot_command_draws_a_real_run(smoke_run: Path, tmp_path: Path) -> None:
    from moderncnn.cli import main as moderncnn_main

    out = tmp_path / "curves.png"
    assert moderncnn_main(["plot", str(smoke_run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
