"""`moderncnn compare`: models x seeds as trials, resumable, reported consistently."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moderncnn.cli import main as moderncnn_main
from moderncnn.io.errors import ConfigError
from moderncnn.training.compare import compare, summarize
from moderncnn.training.trials import TrialResult

REPO = Path(__file__).resolve().parents[2]
MODELS = ["resnet18_cifar", "densenet121_cifar"]
# One epoch of 3 steps on 256 images: enough for every file, a few seconds per trial.
OVERRIDES = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 3}
DENSENET_KWARGS = {"growth_rate": 4, "block_config": [1, 1], "num_init_features": 8}


TINY_CONFIG = {"train_subset": 256, "limit_test_batches": 2}


def command(config: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "moderncnn.cli", "compare", "-c", str(config), "--models", *MODELS,
        "--seeds", "2", "--out", str(out), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches=3", "--model_overrides",
        f"densenet121_cifar:model.model_kwargs={json.dumps(DENSENET_KWARGS)}",
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_compare_resumes_after_a_kill_and_reports_the_same_numbers_everywhere(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    config, out = tiny_config, tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = out / "runs" / "resnet18_cifar" / "seed0" / "result.json"
    process = subprocess.Popen(command(config, out), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.exists(), "the first trial did not finish"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    folders = sorted((out / "runs").glob("*/seed*"))
    finished = {f: snapshot(f) for f in folders if (f / "result.json").exists()}
    assert 1 <= len(finished) < 4 and not (out / "results.csv").exists()

    summaries = compare(
        config, MODELS, seeds=2, out=out, overrides=OVERRIDES,
        model_overrides={"densenet121_cifar": {"model.model_kwargs": DENSENET_KWARGS}},
    )  # fmt: skip

    for folder, files in finished.items():  # kept as they were: not trained again
        assert snapshot(folder) == files
    results = {
        (r["name"], r["seed"]): r
        for r in (json.loads(p.read_text()) for p in out.glob("runs/*/seed*/result.json"))
    }
    assert set(results) == {(m, s) for m in MODELS for s in (0, 1)}
    assert results[("densenet121_cifar", 0)]["settings"]["model.model_kwargs"] == DENSENET_KWARGS
    with (out / "results.csv").open() as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    markdown = (out / "results.md").read_text()
    assert [s.model for s in summaries] == list(rows)  # best first, in both
    for name, row in rows.items():
        accuracies = [results[(name, s)]["test_acc"] for s in (0, 1)]
        assert row["test_acc_per_seed"] == ";".join(f"{a:.4f}" for a in accuracies)
        mean = sum(accuracies) / 2
        assert float(row["test_acc_mean"]) == pytest.approx(mean, abs=1e-4)
        assert int(row["params"]) == results[(name, 0)]["params"] > 0
        assert int(row["macs"]) == results[(name, 1)]["macs"] > 0
        std = abs(accuracies[0] - accuracies[1]) / 2**0.5
        assert f"| {name} | {mean:.2%} ± {std:.2%} |" in markdown
        assert len(results[(name, 0)]["val_curve"]) == 1
    assert rows["resnet18_cifar"]["params"] != rows["densenet121_cifar"]["params"]
    for figure in ("accuracy_vs_macs.png", "curves.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def result(name: str, seed: int, test_acc: float) -> TrialResult:
    return TrialResult(
        name, seed, {}, test_acc, test_acc, 0.5, [test_acc], 10, 100, 1.0, 1.0, 1, ""
    )


def test_a_gap_counts_only_beyond_the_seed_spread() -> None:
    summaries = summarize({
        "noisy": [result("noisy", 0, 0.80), result("noisy", 1, 0.90)],
        "best": [result("best", 0, 0.90), result("best", 1, 0.91)],
        "worse": [result("worse", 0, 0.70), result("worse", 1, 0.71)],
    })  # fmt: skip
    verdicts = {s.model: s.beyond_seed_spread for s in summaries}
    assert [s.model for s in summaries] == ["best", "noisy", "worse"]
    assert verdicts == {"best": "best", "noisy": "no", "worse": "yes"}
    assert summaries[2].gap_to_best == pytest.approx(0.20)


def test_a_refused_compare_writes_nothing(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture
) -> None:
    config, out = tiny_config, tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown model 'resnet_nope'"):
        compare(config, ["resnet18_cifar", "resnet_nope"], out=out)
    argv = ["compare", "-c", str(config), "--models", "resnet18_cifar", "--out", str(out)]
    assert moderncnn_main([*argv, "--model_overrides", "resnet18_cifar-model.lr"]) == 1
    assert "expected MODEL:KEY=VALUE" in capsys.readouterr().err
    assert moderncnn_main([*argv, "--seeds", "0"]) == 1
    assert moderncnn_main([*argv, "--seeds", "two"]) == 2  # argparse
    assert not out.exists()


# One training step, one validation and one test batch.
ONE_STEP = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 1,
    "trainer.limit_val_batches": 1,
}


@pytest.mark.slow
def test_a_finished_trial_made_from_another_base_config_is_refused(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    # Issue 23 H2: lr and widths edited in the base YAML, then --seeds 2: seed 0 at the old
    # config and seed 1 at the new one ended in one row.
    out = tmp_path / "out"
    compare(tiny_config, ["resnet18_cifar"], seeds=1, out=out, overrides=ONE_STEP)
    seed0 = out / "runs" / "resnet18_cifar" / "seed0"
    before = snapshot(seed0)
    config = tiny_config.read_text()
    tiny_config.write_text(config.replace("lr: 0.1", "lr: 0.4").replace("- 16", "- 32"))
    message = (
        rf"{seed0} holds a finished trial made from another config \(model.lr: 0.1 there, 0.4 "
        r"now; model.model_kwargs.channels: \[8, 16\] there, \[8, 32\] now\)"
    )
    with pytest.raises(ConfigError, match=message):
        compare(tiny_config, ["resnet18_cifar"], seeds=2, out=out, overrides=ONE_STEP)
    assert snapshot(seed0) == before and not (out / "runs" / "resnet18_cifar" / "seed1").exists()
    tiny_config.write_text(config)  # the same config again: the finished trial is kept
    with pytest.raises(ConfigError, match=r"trainer.limit_val_batches: 1 there, 2 now"):
        compare(tiny_config, ["resnet18_cifar"], seeds=1, out=out,
                overrides={**ONE_STEP, "trainer.limit_val_batches": 2})  # fmt: skip
    (summary,) = compare(tiny_config, ["resnet18_cifar"], seeds=1, out=out, overrides=ONE_STEP)
    assert snapshot(seed0) == before and len(summary.trials) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.init_args.batch_size", "0"],
         "--models resnet18_cifar: data: batch_size must be a positive integer, got 0"),
        (["--model_overrides",
          "densenet121_cifar:model.model_kwargs={growth_rate: 4, frobnicate: 1}"],
         "--models densenet121_cifar: "),
        (["--trainer.max_epochs", "0"], "trainer.max_epochs must be >= 1"),
    ],
)  # fmt: skip
def test_a_value_one_model_refuses_stops_the_compare_before_any_training(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture, args, message
) -> None:
    # Issue 23 M6 (compare), L10: a traceback, and empty out/runs/<model>/seed0/ trees.
    out = tmp_path / "out"
    argv = ["compare", "-c", str(tiny_config), "--models", *MODELS, "--out", str(out)]
    assert moderncnn_main([*argv, *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moderncnn compare: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_a_trial_does_not_warn_that_its_own_folder_holds_earlier_logs(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path, recwarn
) -> None:
    # Lightning's CSV logger warned "Previous log files in this directory will be deleted"
    # for every trial: the folder holds trial.yaml (and TensorBoard's file), written by us.
    compare(tiny_config, MODELS[:1], seeds=1, out=tmp_path / "out", overrides=OVERRIDES)
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "Experiment logs directory" in m]
    assert (tmp_path / "out" / "runs" / MODELS[0] / "seed0" / "metrics.csv").is_file()
