"""End to end: how long ``moderncnn fit -c configs/quickstart.yaml`` takes, and how accurate it is.

Runs the quickstart (a 78k-parameter ResNet on Fashion-MNIST, 3 epochs, then a test of the
best checkpoint) once per seed, each in its own process and temporary folder, exactly as a
user would type it. Reports the median wall time of a whole run (process start to exit: data
loading, fit, test, plots) and the test accuracy as mean ± standard deviation over the seeds
(airbench's rule: one run's accuracy is an anecdote).

    python benchmarks/train.py                 # 3 seeds: 2-4 minutes each on 2 quiet cores
    python benchmarks/train.py --quick         # smoke run (5 batches, 1 seed): writes nothing
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.yaml"
RESULTS = REPO / "benchmarks" / "results" / "train.md"
# --quick: a few batches of one epoch; checks the plumbing, measures nothing.
QUICK_ARGS = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=5",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]


def run_once(seed: int, extra: list[str], workdir: Path) -> dict[str, float]:
    """One ``moderncnn fit`` in a fresh process in ``workdir``: wall seconds and test accuracy."""
    cmd = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", str(CONFIG)]
    cmd += [f"--seed_everything={seed}", "--trainer.enable_progress_bar=false", *extra]
    # The checkout itself, importable from the temporary folder even without `pip install -e`.
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"seed {seed}: `{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    (metrics,) = workdir.glob("lightning_logs/version_*/metrics.csv")
    return {"seconds": seconds, "test_acc": last_value(metrics, "test_acc")}


def last_value(metrics: Path, column: str) -> float:
    """The last logged value of ``column`` in a Lightning ``metrics.csv``."""
    with metrics.open(newline="") as file:
        values = [row[column] for row in csv.DictReader(file) if row.get(column)]
    if not values:
        raise RuntimeError(f"{metrics} logged no {column!r}: did the test after fit run?")
    return float(values[-1])


def machine_info() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = (
        [f"- **busy machine (load {load:.1f} on {cores} cores): times are inflated; re-run**"]
        if load >= cores
        else []
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {cores} logical cores; GPU: {gpu}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {load:.2f}",
        *busy,
    ]


def report(runs: dict[int, dict[str, float]], args: argparse.Namespace, info: list[str]) -> str:
    seconds = [r["seconds"] for r in runs.values()]
    accs = [100 * r["test_acc"] for r in runs.values()]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    command = " ".join(["moderncnn fit -c", CONFIG.relative_to(REPO).as_posix(), *args.extra])
    lines = ["# Quickstart, end to end: time and test accuracy", ""]
    if args.quick:
        lines += ["**Quick smoke run: a few batches, the numbers mean nothing.**", ""]
    lines += [
        *info,
        "",
        f"`{command} --seed_everything=S`",
        f"for S in {', '.join(map(str, runs))}, one fresh process each. Wall time: process "
        "start to exit (data loading, training with validation, the test of the best "
        "checkpoint, the plots), median over the seeds; test accuracy on the test split "
        "(10,000 images at the defaults): mean ± sample standard deviation over the seeds.",
        "",
        "| seed | wall time (s) | test accuracy (%) |",
        "|---|---|---|",
        *(f"| {s} | {r['seconds']:.1f} | {100 * r['test_acc']:.2f} |" for s, r in runs.items()),
        "",
        f"**Median wall time {statistics.median(seconds):.1f} s; test accuracy "
        f"{statistics.mean(accs):.2f} ± {std:.2f} % (n = {len(accs)} seeds).**",
        "",
        f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 batches, writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    args, extra = parser.parse_known_args(argv)  # anything else goes to `moderncnn fit`
    args.extra = extra
    if args.quick:
        args.seeds = args.seeds[:1]
        args.extra = QUICK_ARGS + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    runs = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="moderncnn-train-bench-") as tmp:
            runs[seed] = run_once(seed, args.extra, Path(tmp))
        print(
            f"seed {seed}: {runs[seed]['seconds']:.1f} s, test accuracy "
            f"{100 * runs[seed]['test_acc']:.2f}%",
            flush=True,
        )
    text = report(runs, args, info)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
