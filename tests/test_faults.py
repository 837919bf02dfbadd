"""Faults: a training process killed mid-epoch, an unwritable or full output folder.

Each case either recovers exactly or fails before anything is written, naming the folder, and
leaves the files of earlier runs as they were. (A feature-cache write killed at any moment is
covered in tests/transfer/test_features.py: ``test_writer_killed_at_any_time_leaves_nothing_
half_read`` and ``test_writer_killed_before_manifest_invalidates_old_cache``.)
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from moderncnn.training.cli import main
from moderncnn.training.plots import read_metrics
from moderncnn.training.preflight import OutputFolderError, check_output_folder

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as conftest.py

# A callback the killed run loads from the test's folder: it says where the second epoch is
# and then waits there, so the kill lands mid-epoch every time, whatever the machine's speed.
PAUSE_CALLBACK = """
import time
from pathlib import Path
import lightning.pytorch as L

class PauseMidEpoch(L.Callback):
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 2:
            Path(self.marker).write_text("epoch 1, batch 2 done")
            time.sleep(300)
"""


def tiny_config() -> dict:
    """Two epochs of a 2-stage ResNet on 512 Fashion-MNIST images: seconds on a CPU."""
    return {
        "seed_everything": 3,
        "test_after_fit": True,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16], "layers": [1, 1]},
            "lr": 0.05,
            "scheduler": "cosine",
            "warmup_epochs": 0.5,
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
    """``moderncnn <args> -c <config>`` in-process, run in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        return main([args[0], "-c", str(path), *args[1:]])
    finally:
        os.chdir(cwd)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {path}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(
    fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "pause_callback.py").write_text(PAUSE_CALLBACK)
    marker = tmp_path / "in_epoch_1"
    killed = tiny_config()
    killed["trainer"]["callbacks"] = [
        {"class_path": "pause_callback.PauseMidEpoch", "init_args": {"marker": str(marker)}}
    ]
    work = tmp_path / "interrupted"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(killed))
    # Same thread count as this process, so both runs' float sums are the same.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "moderncnn.cli", "fit", "-c", "config.yaml"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(marker, process)
        last = work / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        saved = last.read_bytes()  # epoch 0's, written before epoch 1 began
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert last.read_bytes() == saved  # the kill lost nothing that was written
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0

    assert run_cli(work, tiny_config(), "fit", "--ckpt_path", "last") == 0
    resumed = read_metrics(work / "lightning_logs" / "version_1" / "metrics.csv")
    assert run_cli(tmp_path / "whole", tiny_config(), "fit") == 0
    whole = read_metrics(tmp_path / "whole" / "lightning_logs" / "version_0" / "metrics.csv")
    # The resumed run trains epoch 1 only, exactly as the uninterrupted run did, and tests the
    # same best checkpoint to the same accuracy.
    assert sorted(resumed) == [1, 2]
    assert resumed[1] == whole[1]
    assert resumed[2]["test_acc"] == whole[2]["test_acc"], (resumed[2], whole[2])


def test_unwritable_output_folder_is_named_before_training(tmp_path: Path, capsys) -> None:
    # As root, permissions do not stop a write; a file where the run folder's parent should be
    # stops everyone.
    (tmp_path / "lightning_logs").write_text("not a folder")
    assert run_cli(tmp_path, tiny_config(), "fit") == 1
    err = capsys.readouterr().err
    assert "cannot write the run folder lightning_logs/version_0: " in err
    assert f"{tmp_path / 'lightning_logs'} is a file" in err
    assert "save_dir" in err and "Traceback" not in err
    assert (tmp_path / "lightning_logs").read_text() == "not a folder"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_read_only_output_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match=r"runs is not writable \(Permission denied\)"):
            check_output_folder(folder / "lightning_logs" / "version_0")
    finally:
        folder.chmod(0o700)
    assert not list(folder.iterdir())


def test_read_only_mount_is_named_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    # Root ignores folder permissions, but not a read-only mount: the probe write fails with
    # EROFS. Simulated here (mounting needs privileges a test must not ask for).
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"earlier run")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("moderncnn.training.preflight.tempfile.TemporaryFile", read_only)
    assert run_cli(tmp_path, tiny_config(), "fit") == 1
    err = capsys.readouterr().err
    assert "cannot write the run folder lightning_logs/version_1: " in err
    assert "is not writable (Read-only file system)" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert (checkpoints / "last.ckpt").read_bytes() == b"earlier run"


def test_full_disk_is_named_before_training_and_earlier_runs_are_untouched(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # An earlier run's checkpoint must survive a run that cannot start.
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"earlier run")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        "moderncnn.training.preflight.shutil.disk_usage",
        lambda path: usage._replace(free=3 * 2**20),  # 3 MiB left
    )
    assert run_cli(tmp_path, tiny_config(), "fit") == 1
    err = capsys.readouterr().err
    assert "not enough free disk space for the run folder" in err
    assert "3.0 MiB free" in err and "MiB needed (two checkpoints and the logs)" in err
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert (checkpoints / "last.ckpt").read_bytes() == b"earlier run"


def test_output_folder_check_leaves_nothing_behind(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new" / "run")  # writable, room to spare
    assert not list(tmp_path.iterdir())  # neither the folders nor the probe file
