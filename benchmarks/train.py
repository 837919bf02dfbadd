"""Time to accuracy: the quickstart and the fast CPU recipe end to end, beside the plain way.

Every run is ``moderncnn fit -c CONFIG --seed_everything=S`` in a fresh process and a fresh
temporary folder, exactly as a user types it; wall time is process start to exit (data loading,
training with validation, the test of the best checkpoint, the plots and the report). Rows:

- ``quickstart`` and ``fast_cpu`` over the seeds (default 0, 1, 2): median wall time, test
  accuracy mean ± sample standard deviation (airbench's rule: one run is an anecdote);
- ``plain``: the fast_cpu model, optimiser and one-cycle schedule written the way a student
  writes them (torchvision v2 per-image transforms in a ``Dataset`` through a ``DataLoader``,
  fp32, plain cross-entropy, no EMA, no test-time augmentation, a loop over epochs);
- ablations of fast_cpu on the first seed: the same run with one tool switched off (EMA, label
  smoothing, bf16 autocast, channels-last); "no TTA" re-tests each seed's best checkpoint
  without test-time augmentation (same weights, so it costs no training).

Runs are interleaved by seed (round 1: quickstart, fast_cpu, plain, the ablations; round 2: ...),
so a slow spell of the machine spreads over all rows. Threads: torch's default (2 on 2 cores),
stated in the table.

    python benchmarks/train.py                      # ~50 minutes on 2 quiet cores
    python benchmarks/train.py --quick              # smoke run (a few batches): writes nothing
    python benchmarks/train.py --rows fast_cpu --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import moderncnn
from moderncnn.data.idx import read_idx
from moderncnn.training.run_facts import cpu_name

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "quickstart": REPO / "configs" / "quickstart.yaml",
    "fast_cpu": REPO / "configs" / "fashion_mnist" / "fast_cpu.yaml",
}
RESULTS = REPO / "benchmarks" / "results" / "train.md"
# fast_cpu with one tool off: name -> extra command-line settings.
ABLATIONS = {
    "fast_cpu, no EMA": ["--trainer.callbacks=[]"],
    "fast_cpu, no label smoothing": ["--model.label_smoothing=0"],
    "fast_cpu, fp32 (no bf16)": ["--trainer.precision=32-true"],
    "fast_cpu, no channels-last": ["--model.channels_last=false"],
}
ROWS = ("quickstart", "fast_cpu", "plain", "ablations")
# --quick: a few batches of one epoch; checks the plumbing, measures nothing.
QUICK_ARGS = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=5",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]


@dataclass
class Row:
    """One line of the table: its runs' wall seconds and test accuracies, by seed."""

    name: str
    command: str
    seconds: dict[int, float] = field(default_factory=dict)
    test_acc: dict[int, float] = field(default_factory=dict)


def environment() -> dict[str, str]:
    # The checkout itself, importable from the temporary folder even without `pip install -e`.
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def run_fit(config: Path, seed: int, extra: list[str], workdir: Path) -> tuple[float, float]:
    """One ``moderncnn fit`` in a fresh process in ``workdir``: wall seconds, test accuracy."""
    cmd = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", str(config)]
    cmd += [f"--seed_everything={seed}", "--trainer.enable_progress_bar=false", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (metrics,) = workdir.glob("lightning_logs/version_*/metrics.csv")
    return seconds, last_value(metrics, "test_acc")


def retest_without_tta(config: Path, extra: list[str], workdir: Path) -> float:
    """Test accuracy of the run's best checkpoint in ``workdir`` with ``model.tta: []``."""
    (best,) = workdir.glob("lightning_logs/version_0/checkpoints/best-*.ckpt")
    cmd = [sys.executable, "-m", "moderncnn.cli", "test", "-c", str(config), "--model.tta=[]"]
    cmd += [f"--ckpt_path={best}", "--trainer.enable_progress_bar=false", *extra]
    done = subprocess.run(cmd, cwd=workdir, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return last_value(workdir / "lightning_logs" / "version_1" / "metrics.csv", "test_acc")


def last_value(metrics: Path, column: str) -> float:
    """The last logged value of ``column`` in a Lightning ``metrics.csv``."""
    with metrics.open(newline="") as file:
        values = [row[column] for row in csv.DictReader(file) if row.get(column)]
    if not values:
        raise RuntimeError(f"{metrics} logged no {column!r}: did the test after fit run?")
    return float(values[-1])


# -- the plain way ----------------------------------------------------------------------------


def plain_main(seed: int, quick: bool) -> None:
    """fast_cpu's model and schedule the way a student writes them; prints a JSON result."""
    config = yaml.safe_load(CONFIGS["fast_cpu"].read_text())
    model_cfg, data_cfg = config["model"], config["data"]["init_args"]
    epochs = 1 if quick else config["trainer"]["max_epochs"]
    torch.manual_seed(seed)
    root = Path("/usr/share/datasets/fashion-mnist")

    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(root / name).copy())

    images, labels = load("train-images-idx3-ubyte.gz"), load("train-labels-idx1-ubyte.gz").long()
    test_images = load("t10k-images-idx3-ubyte.gz")
    test_labels = load("t10k-labels-idx1-ubyte.gz").long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_idx = order[data_cfg["val_size"] :]  # the same 5,000 held out, unused here

    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.2860], [0.3530])]
    train_tf = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip(), *normalize])
    test_tf = v2.Compose(normalize)

    class Images(Dataset):
        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: v2.Transform) -> None:
            self.x, self.y, self.transform = x, y, transform

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.transform(self.x[i][None]), self.y[i]

    batch = data_cfg["batch_size"]
    train = DataLoader(Images(images[train_idx], labels[train_idx], train_tf), batch, shuffle=True)
    test = DataLoader(Images(test_images, test_labels, test_tf), 512)
    if quick:
        train = [b for b, _ in zip(train, range(5), strict=False)]
    model = moderncnn.create_model(
        model_cfg["model"], num_classes=10, in_chans=1, **model_cfg["model_kwargs"]
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=model_cfg["lr"],
        momentum=model_cfg["momentum"],
        nesterov=True,
        weight_decay=model_cfg["weight_decay"],
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        model_cfg["lr"],
        total_steps=epochs * len(train),
        pct_start=0.5 if quick else model_cfg["warmup_epochs"] / epochs,
        cycle_momentum=False,
    )
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(test):
            if quick and i == 2:
                break
            correct += (model(x).argmax(1) == y).sum().item()
    total = min(len(test_labels), 2 * 512) if quick else len(test_labels)
    print(json.dumps({"test_acc": correct / total}))


def run_plain(seed: int, quick: bool) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--plain-run", str(seed), *(["--quick"] if quick else [])]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"plain run, seed {seed}, failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])["test_acc"]


# -- report -----------------------------------------------------------------------------------


def machine_info() -> list[str]:
    cpu = cpu_name()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = (
        [f"- **busy machine (load {load:.1f} on {cores} cores): times are inflated; re-run**"]
        if load >= cores
        else []
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    bf16 = torch.cpu._is_avx512_bf16_supported()
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {cores} logical cores, AVX-512 BF16: {'yes' if bf16 else 'no'}; GPU: {gpu}",
        f"- threads: torch's default, {torch.get_num_threads()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {load:.2f}",
        *busy,
    ]


def _acc(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(rows: list[Row], reference: Row | None) -> list[str]:
    lines = [
        "| run | n | wall time, median (s) | × fast_cpu time | test accuracy (%) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    ref = statistics.median(reference.seconds.values()) if reference and reference.seconds else 0
    for row in rows:
        seconds = list(row.seconds.values())
        median = statistics.median(seconds) if seconds else math.nan
        ratio = f"{median / ref:.2f}" if ref and seconds else "–"
        per_seed = ", ".join(f"{s}: {100 * a:.2f}" for s, a in row.test_acc.items())
        shown = f"{median:.1f}" if seconds else "(same runs)"
        n = len(row.test_acc)
        lines.append(
            f"| {row.name} | {n} | {shown} | {ratio} | {_acc(list(row.test_acc.values()))} | "
            f"{per_seed} |"
        )
    return lines


def report(rows: list[Row], args: argparse.Namespace, info: list[str]) -> str:
    lines = ["# Time to accuracy on Fashion-MNIST: recipes, the plain way, ablations", ""]
    if args.quick:
        lines += ["**Quick smoke run: a few batches, the numbers mean nothing.**", ""]
    by_name = {row.name: row for row in rows}
    lines += [*info, "", *table(rows, by_name.get("fast_cpu")), "", "Commands (S: the seed):", ""]
    lines += [f"- {row.name}: `{row.command}`" for row in rows]
    lines += [
        "",
        "Wall time: process start to exit, one fresh process and folder per run (data loading, "
        "fit with a validation each epoch, the test of the best checkpoint, plots, report). "
        "Accuracy: the 10,000 test images; mean ± sample standard deviation over the seeds. "
        "Ablations: one seed, each the fast_cpu run with one setting changed; compare with that "
        "seed's fast_cpu figure in the last column.",
        "",
        f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--plain-seeds", type=int, default=1, help="seeds of the plain way")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 batches, writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    parser.add_argument("--plain-run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.extra = QUICK_ARGS if args.quick else []
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_run is not None:
        plain_main(args.plain_run, args.quick)
        return 0
    info = machine_info()
    fit = "moderncnn fit -c {} --seed_everything=S"
    rows = {
        name: Row(name, fit.format(CONFIGS[name].relative_to(REPO)))
        for name in ("quickstart", "fast_cpu")
        if name in args.rows
    }
    if "fast_cpu" in args.rows:
        rows["fast_cpu, no TTA"] = Row(
            "fast_cpu, no TTA", "the fast_cpu checkpoints, --model.tta=[]"
        )
    if "plain" in args.rows:
        rows["plain"] = Row(
            "plain", "python benchmarks/train.py --plain-run S (v2 per image, DataLoader, fp32)"
        )
    if "ablations" in args.rows:
        for name, extra in ABLATIONS.items():
            command = fit.format(CONFIGS["fast_cpu"].relative_to(REPO)) + " " + " ".join(extra)
            rows[name] = Row(name, command)

    def record(name: str, seed: int, seconds: float | None, acc: float) -> None:
        if seconds is not None:
            rows[name].seconds[seed] = seconds
        rows[name].test_acc[seed] = acc
        shown = f"{seconds:.1f} s, " if seconds is not None else ""
        print(f"{name}, seed {seed}: {shown}test accuracy {100 * acc:.2f}%", flush=True)

    for round_, seed in enumerate(args.seeds):
        for name in ("quickstart", "fast_cpu"):
            if name not in rows:
                continue
            with tempfile.TemporaryDirectory(prefix="moderncnn-train-bench-") as tmp:
                record(name, seed, *run_fit(CONFIGS[name], seed, args.extra, Path(tmp)))
                if name == "fast_cpu":
                    acc = retest_without_tta(CONFIGS[name], args.extra, Path(tmp))
                    record("fast_cpu, no TTA", seed, None, acc)
        if "plain" in rows and round_ < args.plain_seeds:
            record("plain", seed, *run_plain(seed, args.quick))
        if round_ == 0 and "ablations" in args.rows:
            for name, extra in ABLATIONS.items():
                with tempfile.TemporaryDirectory(prefix="moderncnn-train-bench-") as tmp:
                    config = CONFIGS["fast_cpu"]
                    record(name, seed, *run_fit(config, seed, [*args.extra, *extra], Path(tmp)))
    text = report(list(rows.values()), args, info)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
