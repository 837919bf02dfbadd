"""Channels-last on a CPU: some torch builds crash (SIGSEGV, a malloc assertion) in the
backward of a strided 1x1 convolution in channels-last for odd batch sizes (torch 2.14.1 on an
AMD EPYC, batch 3). ``channels_last: true`` on a CPU is therefore used only once a probe run
in a subprocess passed for the torch, CPU and thread count in use (issue #12, item 2).

The crash cannot be caught, so every training run here is a subprocess: a crash fails the test
instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import yaml

from moderncnn.training import preflight
from moderncnn.training.module import ImageClassifier

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_verdicts(tmp_path: Path, monkeypatch) -> Path:
    """No cached verdict, in memory or on disk (the cache moved into the test's folder)."""
    monkeypatch.setenv("MODERNCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(preflight, "_channels_last_verdicts", {})
    return tmp_path / "cache" / "moderncnn" / "channels_last.json"


@pytest.mark.parametrize("batch_size", [3])
def test_channels_last_training_with_odd_batches_runs_to_the_end(
    batch_size: int, fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    # The quickstart's network and switches; 19 images make odd batches, the last one too.
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    assert config["model"]["channels_last"] is True
    config["data"]["init_args"] |= {
        "data_dir": str(fashion_mnist_dir),
        "batch_size": batch_size,
        "train_subset": 19 + 4,
        "val_size": 4,
    }
    config["trainer"] |= {
        "max_epochs": 1,
        "limit_test_batches": 1,
        "enable_progress_bar": False,
        "accelerator": "cpu",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MODERNCNN_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "moderncnn.cli", "fit", "-c", "config.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"status {done.returncode}\n{done.stderr[-3000:]}"
    assert "Test accuracy:" in done.stdout


def test_a_crashing_probe_turns_channels_last_off_with_a_warning(
    fresh_verdicts: Path, monkeypatch
) -> None:
    monkeypatch.setattr(preflight, "CHANNELS_LAST_PROBE", "import os; os.abort()")
    with pytest.warns(UserWarning, match=r"failed in a check run in a subprocess \(killed by sig"):
        assert preflight.channels_last_is_safe() is False
    # The verdict is kept: the next run (another process) does not start the probe again.
    monkeypatch.setattr(preflight, "_channels_last_verdicts", {})

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(preflight.subprocess, "run", no_subprocess)
    assert preflight.channels_last_is_safe() is False
    assert fresh_verdicts.is_file() and False in yaml.safe_load(fresh_verdicts.read_text()).values()


@pytest.mark.parametrize("bf16", [False, True])
def test_the_probe_decides_as_a_direct_run_does_and_is_run_once(
    bf16: bool, fresh_verdicts: Path, monkeypatch, recwarn
) -> None:
    probes = []
    real_run = subprocess.run

    def counting_run(args, *rest, **kwargs):
        if args and args[0] == sys.executable:  # not platform's own `uname -p`
            probes.append(args)
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(preflight.subprocess, "run", counting_run)
    first = preflight.channels_last_is_safe(bf16=bf16)
    second = preflight.channels_last_is_safe(bf16=bf16)
    assert first == second and len(probes) == 1
    # The verdict is this machine's and thread count's: where the kernels crash (torch 2.14.1 on
    # some EPYC CPUs at 2 threads) it is False and a warning says so; where they run, True, and
    # channels-last keeps its speed. bf16-mixed training has a probe (and a verdict) of its own:
    # there the same torch and CPU passed.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as the guard's
    direct = real_run(
        [
            sys.executable,
            "-c",
            preflight.CHANNELS_LAST_PROBE_BF16 if bf16 else preflight.CHANNELS_LAST_PROBE,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert first is (direct.returncode == 0 and "channels-last ok" in direct.stdout)
    said = "channels-last bf16 training step" if bf16 else "channels-last training step"
    warned = any(said in str(w.message) for w in recwarn)
    assert warned is (not first)


@pytest.mark.parametrize("safe", [True, False])
def test_setup_on_a_cpu_follows_the_probe(safe: bool, monkeypatch) -> None:
    monkeypatch.setattr("moderncnn.training.module.channels_last_is_safe", lambda bf16=False: safe)
    module = ImageClassifier(
        "resnet18_cifar",
        in_chans=1,
        model_kwargs={"channels": [8], "layers": [1]},
        channels_last=True,
        scheduler="none",
    )
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    module.setup("fit")
    expected = torch.channels_last if safe else torch.contiguous_format
    assert module.memory_format == expected
    assert module.model.conv1.weight.is_contiguous(memory_format=expected)
