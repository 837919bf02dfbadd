"""`moderncnn fit|test` end to end on real Fashion-MNIST (tiny model and subset), and configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from moderncnn.training.cli import build_cli, main
from moderncnn.training.module import ImageClassifier
from moderncnn.training.plots import read_metrics

REPO = Path(__file__).resolve().parents[2]
# The GPU recipes build full-size networks (seconds each on 2 cores); the quickstart's is tiny.
CONFIGS = [
    pytest.param(path, marks=[] if path.name == "quickstart.yaml" else [pytest.mark.slow])
    for path in sorted((REPO / "configs").rglob("*.yaml"))
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


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_config_instantiates(config: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data here: building the classes must not load any
    cli = build_cli(["-c", str(config)], run=False)
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.lrr", "0.1"], "unrecognized arguments: --model.lrr"),
        (["--trainer.max_epochz=3"], "trainer.max_epochz"),
        (["--model.optimizer", "rmsprop"], "Expected a typing.Literal['sgd', 'adam', 'adamw']"),
        (["--model.model", "resnet18_cifr"], "Did you mean 'resnet18_cifar'"),
    ],
)
def test_config_errors_are_one_clear_line(
    override: list[str], message: str, tmp_path: Path, capsys
) -> None:
    status = run_cli(tmp_path, tiny_config(), "fit", *override)
    err = capsys.readouterr().err
    assert status != 0 and message in err
    assert "Traceback" not in err and "usage:" not in err


def test_unknown_key_in_a_config_file_is_named(tmp_path: Path, capsys) -> None:
    config = tiny_config()
    config["model"]["weight_decy"] = 0.1
    assert run_cli(tmp_path, config, "fit") == 2
    assert "does not accept option 'model.weight_decy'" in capsys.readouterr().err


def test_test_without_an_earlier_run_says_what_to_do(tmp_path: Path, capsys) -> None:
    assert run_cli(tmp_path, tiny_config(), "test", "--ckpt_path", "best") == 1
    assert "no lightning_logs/*/checkpoints/last.ckpt; train with `fit` first" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_plot_command_draws_a_real_run(smoke_run: Path, tmp_path: Path) -> None:
    from moderncnn.cli import main as moderncnn_main

    out = tmp_path / "curves.png"
    assert moderncnn_main(["plot", str(smoke_run), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
