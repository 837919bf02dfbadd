"""Faults: a training process killed mid-epoch, an unwritable or full output folder.

Each case either recovers exactly or fails before anything is written, naming the folder, and
leaves the files of earlier runs as they were. (A feature-cache write killed at any moment is
covered in tests/transfer/test_features.py: ``test_writer_killed_at_any_time_leaves_nothing_
half_read`` and ``test_writer_killed_before_manifest_invalidates_old_cache``.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from moderncnn.training.cli import main
from moderncnn.training.preflight import OutputFolderError, check_output_folder
from moderncnn.viz import read_metrics

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


# -- issue #12: checkpoints written atomically, full disks, SIGTERM, simultaneous runs ---------

from moderncnn.io.errors import ConfigError, OutputError  # noqa: E402
from moderncnn.training.callbacks import AtomicCheckpointIO  # noqa: E402
from moderncnn.training.run_folders import claim_run_folder  # noqa: E402

# Callbacks that the runs in subprocesses load from the test's folder.
FAULT_CALLBACKS = """
import os, time
from pathlib import Path
import lightning.pytorch as L

class MarkSaves(L.Callback):
    '''Writes saves/N when the N-th checkpoint starts being written (dump, then write).'''
    def __init__(self, folder: str) -> None:
        self.folder, self.count = Path(folder), 0
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.count += 1
        self.folder.mkdir(exist_ok=True)
        (self.folder / str(self.count)).touch()

class FillDisk(L.Callback):
    '''At the start of epoch `epoch`, fills the run's disk up to `leave` free bytes.'''
    def __init__(self, epoch: int, leave: int, filler: str) -> None:
        self.epoch, self.leave, self.filler = epoch, leave, filler
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            import shutil
            free = shutil.disk_usage(Path(self.filler).parent).free
            with open(self.filler, "wb") as f:
                f.write(b"\\0" * max(free - self.leave, 0))

class WaitForSigterm(L.Callback):
    '''At epoch 1, batch 1: writes `marker`, then waits (up to 2 min) for a SIGTERM.'''
    def __init__(self, marker: str) -> None:
        self.marker = marker
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1:
            Path(self.marker).write_text("waiting")
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.02)

class PoisonWeights(L.Callback):
    '''After the first training epoch, puts a nan into the classifier's weights.'''
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.model.fc.weight.data[0, 0] = float("nan")
"""


def quick_config(channels=(8, 16), epochs: int = 2) -> dict:
    """`epochs` epochs of 4 steps on 64 Fashion-MNIST images: a few seconds a run."""
    config = tiny_config()
    config["test_after_fit"] = False
    config["model"]["model_kwargs"] = {"channels": list(channels), "layers": [1] * len(channels)}
    config["data"]["init_args"] |= {"batch_size": 16, "train_subset": 80, "val_size": 16}
    config["trainer"] |= {"max_epochs": epochs, "limit_train_batches": 4, "limit_val_batches": 1}
    return config


def with_callbacks(config: dict, *callbacks: dict) -> dict:
    config["trainer"]["callbacks"] = [
        {"class_path": f"fault_callbacks.{name}", "init_args": args}
        for item in callbacks
        for name, args in item.items()
    ]
    return config


def fit_process(
    work: Path, config: dict, tmp_path: Path, *args: str, tmpdir: Path | None = None
) -> subprocess.Popen:
    """`moderncnn fit -c config.yaml` in a subprocess in `work`, callbacks importable."""
    (tmp_path / "fault_callbacks.py").write_text(FAULT_CALLBACKS)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "OMP_NUM_THREADS": "1",
    }
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    command = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", "config.yaml", *args]
    return subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A fresh tmpfs (another filesystem than $TMPDIR's) of a given size: mount(size) -> path."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def loads(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def temporary_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or "tmp" in p.name)


def test_checkpoint_is_written_beside_its_destination_never_in_tmpdir(
    tmp_path: Path, monkeypatch
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr("moderncnn.io.atomic.os.replace", replace)
    destination = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, destination)
    assert [(src.parent, dst) for src, dst in renames] == [(destination.parent, destination)]
    assert not list(tmpdir.iterdir())
    assert torch.equal(loads(destination)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in destination.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_checkpoint_write_keeps_the_earlier_file_and_leaves_no_temporary(
    failing: str, tmp_path: Path, monkeypatch
) -> None:
    destination = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, destination)
    earlier = destination.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {
        "write": "pathlib.Path.write_bytes",
        "fsync": "moderncnn.io.atomic.os.fsync",
        "replace": "moderncnn.io.atomic.os.replace",
    }[failing]
    monkeypatch.setattr(target, full)
    with pytest.raises(OutputError, match=r"the disk is full: writing the checkpoint .*last\.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1, "big": torch.ones(1000)}, destination)
    assert destination.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_fit_writes_its_checkpoints_with_the_atomic_writer(tmp_path: Path) -> None:
    import lightning.pytorch as L

    from moderncnn.training.callbacks import ResumableModelCheckpoint

    trainer = L.Trainer(
        callbacks=[ResumableModelCheckpoint(dirpath=tmp_path)], logger=False, max_steps=1
    )
    trainer.callbacks[-1].setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


@pytest.mark.slow
def test_run_on_another_filesystem_killed_while_writing_checkpoints_keeps_last_loadable(
    tmpfs, tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    # The run folder on a tmpfs, $TMPDIR elsewhere: Lightning's writer staged checkpoints in
    # $TMPDIR and copied them into the open last.ckpt. 10 MB checkpoints, one every step; each
    # run is killed (SIGKILL) at a random moment after its k-th checkpoint write started.
    import random

    work = tmpfs("256m")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    rng = random.Random(12)
    last = work / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    kills = 0
    for attempt in range(4):
        saves = tmp_path / f"saves{attempt}"
        config = with_callbacks(
            quick_config(channels=(128, 256), epochs=50), {"MarkSaves": {"folder": str(saves)}}
        )
        config["trainer"]["limit_train_batches"] = 100
        config["checkpoint"] = {"every_n_train_steps": 1, "monitor": None, "save_top_k": 1}
        resume = ("--ckpt_path", str(last)) if last.exists() else ()
        process = fit_process(work, config, tmp_path, *resume, tmpdir=tmpdir)
        try:
            wait_for(saves / str(rng.randint(2, 4)), process, timeout=300)
            time.sleep(rng.uniform(0, 0.03))  # somewhere in serialising, writing, renaming
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        finally:
            process.kill()
            process.communicate(timeout=60)
        for candidate in work.rglob("last.ckpt"):
            assert loads(candidate)["global_step"] >= 1  # never half a file
        assert not list(tmpdir.iterdir()), "nothing staged (or leaked) in $TMPDIR"
        # A kill mid-write leaves at most the hidden temporary beside each destination.
        for leftover in work.rglob("*.tmp"):
            assert leftover.name.startswith(".") and leftover.parent.name == "checkpoints"
    assert kills == 4 and any(work.rglob("last.ckpt"))


@pytest.mark.slow
def test_full_disk_during_training_says_so_and_keeps_the_last_good_checkpoint(
    tmpfs, tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    work = tmpfs("24m")
    filler = work / "someone_elses_file"
    config = with_callbacks(
        quick_config(channels=(32, 64)),
        {"FillDisk": {"epoch": 1, "leave": 32 * 1024, "filler": str(filler)}},
    )
    process = fit_process(work, config, tmp_path)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("moderncnn fit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "the disk is full: writing the checkpoint" in lines[0]
    assert "No space left on device" in lines[0] and "resume with --ckpt_path last" in lines[0]
    checkpoints = work / "lightning_logs" / "version_0" / "checkpoints"
    assert loads(checkpoints / "last.ckpt")["epoch"] == 0  # epoch 0's, whole
    for path in checkpoints.iterdir():
        assert path.stat().st_size > 0 and loads(path)["epoch"] == 0
    assert not list(work.rglob("*.tmp"))  # the partial write was removed


@pytest.mark.slow
def test_sigterm_exits_143_and_says_how_to_resume(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    marker = tmp_path / "waiting"
    config = with_callbacks(quick_config(), {"WaitForSigterm": {"marker": str(marker)}})
    work = tmp_path / "run"
    process = fit_process(work, config, tmp_path)
    try:
        wait_for(marker, process)
        os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err[-3000:]
    last = Path("lightning_logs") / "version_0" / "checkpoints" / "last.ckpt"
    assert (
        f"moderncnn fit: stopped by SIGTERM at epoch 1, step 6; the last saved checkpoint is {last}"
        in err
    )
    assert "Resume with: moderncnn fit -c config.yaml --ckpt_path last" in err
    assert "Traceback" not in err
    assert loads(work / last)["epoch"] == 0


def test_sigterm_before_the_first_checkpoint_leaves_no_run_folder(
    tmp_path: Path, fashion_mnist_dir: Path, capsys, monkeypatch
) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stop(self, *args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr("moderncnn.training.callbacks.SeedEachEpoch.on_train_epoch_start", stop)
    assert run_cli(tmp_path, quick_config(), "fit") == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at epoch 0, step 0; no checkpoint was written yet" in err
    assert not (tmp_path / "lightning_logs").exists()


def test_two_runs_that_chose_the_same_version_get_two_folders(tmp_path: Path, monkeypatch) -> None:
    # Both runs list lightning_logs/ before either makes its folder: both pick version_0.
    from moderncnn.training.cli import build_cli

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(quick_config()))
    first = build_cli(["-c", str(config)], run=False).trainer
    second = build_cli(["-c", str(config)], run=False).trainer
    assert first.loggers[0].version == second.loggers[0].version == 0
    assert claim_run_folder(first) == Path("lightning_logs/version_0")
    assert claim_run_folder(second) == Path("lightning_logs/version_1")
    assert [Path(lg.log_dir) for lg in second.loggers] == [Path("lightning_logs/version_1")] * 2
    assert claim_run_folder(second) is None  # once per Trainer


@pytest.mark.slow
def test_two_fits_started_at_once_in_one_folder_write_two_complete_runs(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    work = tmp_path / "shared"
    runs = [fit_process(work, quick_config(), tmp_path) for _ in range(2)]
    for process in runs:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    folders = sorted(p.name for p in (work / "lightning_logs").iterdir())
    assert folders == ["version_0", "version_1"]
    for folder in folders:
        run = work / "lightning_logs" / folder
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()
        assert sorted(read_metrics(run / "metrics.csv")) == [0, 1]


def test_non_finite_weights_are_never_saved_as_best(
    tmp_path: Path, fashion_mnist_dir: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "fault_callbacks.py").write_text(FAULT_CALLBACKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = with_callbacks(quick_config(), {"PoisonWeights": {}})
    assert run_cli(tmp_path / "run", config, "fit") == 1
    err = capsys.readouterr().err
    assert "training diverged: the weights hold nan or inf (model.fc.weight) at step 4" in err
    assert "no checkpoint with non-finite weights was saved" in err and "Traceback" not in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert not (tmp_path / "run" / "lightning_logs").exists()


def test_non_finite_loss_stops_at_its_step_naming_the_learning_rate(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    config = quick_config(epochs=1)
    config["model"] |= {"lr": 1e30, "scheduler": "none"}
    assert run_cli(tmp_path, config, "fit") == 1
    err = capsys.readouterr().err
    assert "training diverged: the training loss is nan at step 1 (epoch 0; learning rate " in err
    assert "model.lr 1e+30). Stopped" in err and "Try a lower model.lr (e.g. 1e+29)" in err
    assert not (tmp_path / "lightning_logs").exists()
    assert issubclass(ConfigError, ValueError)


def test_last_checkpoint_is_every_epochs_even_when_it_did_not_improve(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    # Lightning >= 2.5 refreshes last.ckpt only with a new best; here epoch 0 stays the best.
    config = quick_config(epochs=2)
    config["checkpoint"] = {"monitor": "epoch", "mode": "min"}
    assert run_cli(tmp_path, config, "fit") == 0
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert loads(checkpoints / "last.ckpt")["epoch"] == 1
    (best,) = checkpoints.glob("best-*.ckpt")
    assert loads(best)["epoch"] == 0


def test_a_temporary_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".best.ckpt.x.tmp").write_bytes(b"another file's")
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.ckpt.x.tmp", "last.ckpt"]


# -- permissions and swapped files (issue 23, L1, H7) ------------------------------------------


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_keep_the_replaced_files_mode_or_follow_the_umask(
    tmp_path: Path, umask_027
) -> None:
    from moderncnn.inference.export import export_model
    from moderncnn.io.atomic import atomic_write_text
    from moderncnn.models import create_model

    # mkstemp makes 0600: a replaced 0644 model.onnx became private to its writer.
    model = create_model("resnet18_cifar", num_classes=3, channels=(8, 8), layers=(1, 1))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an earlier export")
    onnx.chmod(0o644)
    export_model(model, onnx, "onnx", input_size=(3, 16, 16))
    assert mode(onnx) == 0o644
    assert mode(tmp_path / "model.onnx.json") == 0o640  # new: 0666 less the umask 027
    atomic_write_text(tmp_path / "notes.txt", "new")
    assert mode(tmp_path / "notes.txt") == 0o640
    (tmp_path / "notes.txt").chmod(0o604)
    atomic_write_text(tmp_path / "notes.txt", "again")
    assert mode(tmp_path / "notes.txt") == 0o604
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, tmp_path / "last.ckpt")
    assert mode(tmp_path / "last.ckpt") == 0o640


def test_a_block_that_refuses_its_file_writes_nothing(tmp_path: Path, umask_027) -> None:
    from moderncnn.io.atomic import atomic_replace

    target = tmp_path / "model.onnx"
    target.write_text("the earlier export")
    with pytest.raises(RuntimeError, match="check failed"):
        with atomic_replace(target) as tmp:
            tmp.write_text("a wrong export")
            raise RuntimeError("check failed")
    assert target.read_text() == "the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with atomic_replace(tmp_path / "new.bin", suffix=".partial") as tmp:
        assert tmp.name.endswith(".partial")
        tmp.write_bytes(b"done")
    assert (tmp_path / "new.bin").read_bytes() == b"done"
    assert mode(tmp_path / "new.bin") == 0o640  # not mkstemp's 0600


def test_the_channels_last_verdicts_follow_the_umask(tmp_path: Path, umask_027) -> None:
    from moderncnn.training import preflight

    preflight._write_json_atomically(tmp_path / "verdicts.json", {"a": True})
    assert json.loads((tmp_path / "verdicts.json").read_text()) == {"a": True}
    assert mode(tmp_path / "verdicts.json") == 0o640


def test_a_swapped_cached_export_is_never_run(tmp_path: Path) -> None:
    """Another checkpoint's cached ONNX export copied over this one's (same name, same sidecar):
    predictions must still be this checkpoint's."""
    pytest.importorskip("onnxruntime")
    from moderncnn.inference import load_model, save_model
    from moderncnn.io.card import ModelCard, Preprocess
    from moderncnn.models import create_model

    card = ModelCard(
        "resnet18_cifar", 4, 1, {"channels": [8], "layers": [1]},
        preprocess=Preprocess(16, None, (0.5,), (0.25,)),
    )  # fmt: skip
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("resnet18_cifar", num_classes=4, in_chans=1, channels=[8], layers=[1])
        folders.append(save_model(model.eval(), tmp_path / f"m{seed}", card))
    x = torch.randn(2, 1, 16, 16)
    for folder in folders:
        load_model(folder, runtime="onnxruntime")(x)
    (ours,), (theirs,) = (list(f.glob("model.*.onnx")) for f in folders)
    shutil.copyfile(theirs, ours)
    expected = load_model(folders[0], runtime="torch")(x)
    got = load_model(folders[0], runtime="onnxruntime")(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


# -- tune's study journal ---------------------------------------------------------------------


def test_a_journal_record_torn_by_a_kill_is_cut_and_the_study_goes_on(tmp_path: Path) -> None:
    # Issue 23 M7: a record cut short (a kill, a full disk) and a later append after it made
    # the journal unreadable for good.
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from moderncnn.training.studies import StudyStorage

    path = tmp_path / "study.journal"

    def storage() -> JournalStorage:
        return JournalStorage(JournalFileBackend(str(path)))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage(), study_name="s")
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    intact = path.read_bytes()
    record = intact.splitlines(keepends=True)[-1]
    path.write_bytes(intact + record[: len(record) // 2])  # what a kill mid-append leaves
    cut = rf"{path}: its last record was cut short .* removed those {len(record) // 2} bytes"
    with pytest.warns(UserWarning, match=cut):
        StudyStorage.resolve(tmp_path, None).check()
    assert path.read_bytes() == intact
    study = optuna.load_study(storage=storage(), study_name="s")
    study.tell(study.ask(), 3.0)
    trials = optuna.load_study(storage=storage(), study_name="s").trials
    assert [t.value for t in trials] == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_tune_resumes_a_study_with_a_torn_journal(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    optuna = pytest.importorskip("optuna")
    from moderncnn.training.tune import tune

    config, space, out = tmp_path / "c.yaml", tmp_path / "s.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(tiny_config()))
    space.write_text("model.lr: {low: 0.01, high: 0.5, log: true}\n")
    one_step = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1,
                "trainer.limit_val_batches": 1, "trainer.accelerator": "cpu"}  # fmt: skip
    tune(config, space, 1, out=out, study_name="s", overrides=one_step)
    journal = out / "study.journal"
    with journal.open("ab") as file:
        file.write(b'{"op_code":4,"worker_id":"a-b","study_id":0,"datetime_st')
    with pytest.warns(UserWarning, match="its last record was cut short"):
        study = tune(config, space, 1, out=out, study_name="s", overrides=one_step)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert (out / "trials" / "s" / "trial1" / "result.json").is_file()
