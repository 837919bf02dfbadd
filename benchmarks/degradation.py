"""The degradation problem (He et al. 2016, Fig. 6) on Fashion-MNIST, on a CPU: plain-20,
plain-56, ResNet-20 and ResNet-56 trained for the same number of steps
(``configs/papers/degradation.yaml``) over several seeds, through ``moderncnn compare``.

Writes ``benchmarks/results/degradation.md`` (final training, validation and test error per
network and seed, their means, wall time per run, the machine) and
``benchmarks/results/degradation.png`` (training and validation error against steps, plain
nets dashed).

    python benchmarks/degradation.py              # 2 seeds; about 15 minutes a seed on 2 cores
    python benchmarks/degradation.py --quick      # smoke run (a few steps): writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from moderncnn.training.compare import compare
from moderncnn.training.run_facts import cpu_name
from moderncnn.training.trials import TrialResult
from moderncnn.viz import plot_degradation
from moderncnn.viz.degradation import read_step_curves

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "papers" / "degradation.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MODELS = ["plain20", "plain56", "resnet20", "resnet56"]
# The final training error: the mean of the last windows over this fraction of the run (one
# batch's error alone is noisy: +-4 points at batch 128).
LAST_FRACTION = 0.1
QUICK = {
    "trainer.max_steps": 4,
    "trainer.val_check_interval": 2,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "model.curve_every_n_steps": 1,
    "data.init_args.batch_size": 32,
    "data.init_args.train_subset": 512,
    "data.init_args.val_size": 64,
}


def final_errors(trial: TrialResult) -> dict[str, float]:
    """Final training error (mean of the last windows), validation and test error, in %."""
    curves = read_step_curves(trial.run_dir)
    train = curves.get("train_acc_window", [])
    last_steps = max(1, round(LAST_FRACTION * len(train)))
    val = curves.get("val_acc", [])
    return {
        "train": 100 * (1 - statistics.fmean(a for _, a in train[-last_steps:])),
        "val": 100 * (1 - val[-1][1]) if val else float("nan"),
        "test": 100 * (1 - trial.test_acc) if trial.test_acc is not None else float("nan"),
        "steps": train[-1][0] if train else 0,
    }


def schedule(config: dict) -> str:
    """The learning-rate schedule in words: constant, or a linear warm-up then constant."""
    model = config["model"]
    if model.get("scheduler", "onecycle") == "none":
        return "constant"
    data = config["data"]["init_args"]
    steps_per_epoch = -(-(60_000 - data["val_size"]) // data["batch_size"])
    warmup = round(model.get("warmup_epochs", 0) * steps_per_epoch)
    return f"linear warm-up over {warmup} steps, then constant"


def test_images(config: dict) -> str:
    """Which test images the budget tests on (``limit_test_batches``: a count or a fraction)."""
    limit = config["trainer"].get("limit_test_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        return f"the first {limit * config['data']['init_args']['batch_size']:,} test images"
    return "the 10,000 test images" if limit in (None, 1.0) else f"{limit:.0%} of the test images"


def report(trials: dict[str, list[TrialResult]], config: dict, minutes: float, load: float) -> str:
    """The Markdown page: the budget, the machine, one row per network and seed, the means."""
    trainer, model = config["trainer"], config["model"]
    seeds = max(len(t) for t in trials.values())
    lines = [
        "# The degradation problem on Fashion-MNIST (He et al. 2016, Fig. 6), on a CPU",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; fp32",
        f"- load average (1 min) at start: {load:.2f}; whole benchmark: {minutes:.1f} min",
        f"- budget (`{CONFIG.relative_to(REPO)}`): {trainer['max_steps']} steps of batch "
        f"{config['data']['init_args']['batch_size']}, SGD lr {model['lr']} ({schedule(config)}), "
        f"momentum {model['momentum']}, weight decay {model['weight_decay']}; validation on "
        f"{config['data']['init_args']['val_size']} held-out images every "
        f"{trainer['val_check_interval']} steps; test on {test_images(config)}; "
        f"{seeds} seed(s)",
        f"- final training error: mean over the last {LAST_FRACTION:.0%} of the run's "
        "training windows; validation and test error: the final model's",
        "",
        "| network | seed | final training error | final validation error | test error "
        "| wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    means = []
    for name, runs in trials.items():
        errors = [final_errors(t) for t in runs]
        for trial, e in zip(runs, errors, strict=True):
            lines.append(
                f"| {name} | {trial.seed} | {e['train']:.2f}% | {e['val']:.2f}% "
                f"| {e['test']:.2f}% | {trial.wall_s:.0f} s |"
            )
        mean = {k: statistics.fmean(e[k] for e in errors) for k in ("train", "val", "test")}
        wall = statistics.fmean(t.wall_s for t in runs)
        means.append(
            f"| {name} | mean | {mean['train']:.2f}% | {mean['val']:.2f}% "
            f"| {mean['test']:.2f}% | {wall:.0f} s |"
        )
    lines += [*means, "", "![degradation](degradation.png)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps; writes nothing")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per network (default 2)")
    parser.add_argument("--out", help="compare's output folder (default: a temporary one)")
    args = parser.parse_args()
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        print(f"needs Fashion-MNIST in {FASHION_MNIST_DIR} (scripts/setup.sh)", file=sys.stderr)
        return 1
    out = Path(args.out or tempfile.mkdtemp(prefix="moderncnn-degradation-"))
    overrides = QUICK if args.quick else {}
    seeds = 1 if args.quick else args.seeds
    load = os.getloadavg()[0]
    started = time.perf_counter()
    summaries = compare(CONFIG, MODELS, seeds=seeds, out=out, overrides=overrides)
    minutes = (time.perf_counter() - started) / 60
    trials = {s.model: s.trials for s in sorted(summaries, key=lambda s: MODELS.index(s.model))}
    config = yaml.safe_load(CONFIG.read_text())
    for key, value in overrides.items():  # the budget the table states is the one run
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    text = report(trials, config, minutes, load)
    print(text)
    if args.quick:
        plot_degradation(out, save=out / "degradation.png")
        print(f"quick run: {out} (benchmarks/results/ untouched)")
        return 0
    RESULTS.mkdir(exist_ok=True)
    plot_degradation(out, save=RESULTS / "degradation.png")
    (RESULTS / "degradation.md").write_text(text)
    print(RESULTS / "degradation.md", RESULTS / "degradation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
