"""Distributed training: `moderncnn fit` with DDP on 2 CPU processes (gloo), and lr scaling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from moderncnn.training.cli import main
from moderncnn.training.module import ImageClassifier
from moderncnn.viz import read_metrics

REPO = Path(__file__).resolve().parents[2]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py


def ddp_config() -> dict:
    """Two epochs of a 78k-parameter ResNet on 1,024 Fashion-MNIST images, 32 per device step."""
    return {
        "seed_everything": 7,
        "test_after_fit": True,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
            "lr": 0.05,
            "lr_scaling": "linear",  # the global batch doubles with 2 processes: so does lr
            "scheduler": "onecycle",
            "warmup_epochs": 0.5,
        },
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {
                "data_dir": str(FASHION_MNIST_DIR),
                "batch_size": 32,
                "train_subset": 1152,
                "val_size": 128,
                "augmentations": [],
            },
        },
        "trainer": {
            "max_epochs": 2,
            "limit_test_batches": 8,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }


@pytest.mark.slow
def test_two_process_ddp_fit_writes_one_run_and_learns_like_one_process(
    fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(ddp_config()))
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    # As a user runs it: Lightning starts the second process by running the command again.
    command = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", str(config)]
    ddp_args = ["--trainer.strategy=ddp", "--trainer.devices=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command + ddp_args, cwd=ddp_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr
    assert "lr 0.05, linear-scaled for 2 processes: 0.1" in done.stdout + done.stderr

    # One run folder, written by rank 0 only: no second version, metrics.csv or plot.
    (run,) = (ddp_dir / "lightning_logs").iterdir()
    assert run.name == "version_0"
    assert [p.name for p in ddp_dir.rglob("metrics.csv")] == ["metrics.csv"]
    pictures = ["confusion_matrix.png", "curves.png", "most_confused.png", "top_losses.png"]
    assert sorted(p.name for p in ddp_dir.rglob("*.png")) == pictures
    assert [p.name for p in ddp_dir.rglob("report.html")] == ["report.html"]
    assert done.stdout.count("Test accuracy:") == 1  # printed by rank 0 only
    # 1,024 training images, 2 x 32 per step: 16 steps per epoch (one process would take 32).
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * 16
    ddp = read_metrics(run / "metrics.csv")
    # The confusion matrix counts every process's test images (2 x 8 batches of 32).
    rows = (run / "per_class_accuracy.csv").read_text().splitlines()[1:]
    assert sum(int(row.split(",")[1]) for row in rows) == 2 * 8 * 32

    # The same config in one process (in-process: no second interpreter to start).
    cwd = Path.cwd()
    os.chdir(single_dir)
    try:
        assert main(["fit", "-c", str(config)]) == 0
    finally:
        os.chdir(cwd)
    single = read_metrics(single_dir / "lightning_logs" / "version_0" / "metrics.csv")
    ddp_acc, single_acc = ddp[2]["test_acc"], single[2]["test_acc"]
    assert ddp_acc > 0.5 and single_acc > 0.5  # chance is 0.1
    assert abs(ddp_acc - single_acc) < 0.1, (ddp_acc, single_acc)


@pytest.mark.parametrize(
    ("scaling", "processes", "expected"),
    [("none", 8, 0.1), ("linear", 8, 0.8), ("sqrt", 4, 0.2), ("linear", 1, 0.1)],
)
def test_lr_scaling_multiplies_lr_by_the_process_count(
    scaling: str, processes: int, expected: float
) -> None:
    module = ImageClassifier(
        "resnet18_cifar",
        model_kwargs={"channels": [8], "layers": [1]},
        lr=0.1,
        lr_scaling=scaling,
        scheduler="none",
    )
    module._trainer = SimpleNamespace(world_size=processes)  # devices x nodes
    optimizer = module.configure_optimizers()["optimizer"]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected] * 2)


def test_unknown_lr_scaling_is_named() -> None:
    with pytest.raises(ValueError, match="lr_scaling must be one of 'none', 'linear', 'sqrt'"):
        ImageClassifier(lr_scaling="cubic")  # type: ignore[arg-type]
