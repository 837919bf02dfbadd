"""Time to 94% and 95% on Fashion-MNIST on one GPU: our recipes, in under 8 minutes in all.

Runs, one after another, each as ``moderncnn fit`` in a fresh process and temporary folder with
:class:`~moderncnn.training.callbacks.FitClock` added (``fit_seconds`` beside every epoch's
``val_acc`` in ``metrics.csv``):

- ``fast_cpu``: ``configs/fashion_mnist/fast_cpu.yaml`` as it is (10 epochs);
- ``resnet18_cifar10_fast on Fashion-MNIST``: the model, optimiser, schedule and speed switches
  of ``configs/resnet18_cifar10_fast.yaml`` (full-width ResNet-18, batch 512, one cycle, label
  smoothing 0.2, bf16, channels-last, cuDNN autotuning) on Fashion-MNIST with fast_cpu's data
  section (2-px shifts, flips, 5,000 training images held out for validation);
- ``fashion_mnist/resnet18``: ``configs/fashion_mnist/resnet18.yaml`` (ResNet-18, cosine) in
  25 of its 60 epochs.

Each run is also capped by ``--trainer.max_time`` (:data:`BUDGET`), so the whole script ends
within 8 minutes even on a slower GPU (a capped run reports how far it got).

Then the papers' recipes (``configs/papers/``), for the README's "paper vs ours" table: ResNet-20,
-56 and -110 with He et al.'s schedule (64k iterations) and DenseNet-BC-100 with Huang et al.'s
(300 epochs), on CIFAR-10 with ``--cifar10 DIR`` (the folder holding
``cifar-10-batches-py/``), else on Fashion-MNIST (then not comparable with the papers' CIFAR-10
numbers, and marked so). Full schedules take hours (DenseNet-BC: ~211k steps);
``--papers-budget SECONDS`` caps each run (a capped run reports how far it got).

Time to X%: ``fit_seconds`` of the first epoch whose validation accuracy (the 5,000 held-out
images) reaches X; the test accuracy of the best checkpoint is reported beside it. Writes
``benchmarks/results/gpu_time_to_accuracy.md`` naming the GPU.

    python benchmarks/gpu_time_to_accuracy.py                  # on a machine with a CUDA GPU
    python benchmarks/gpu_time_to_accuracy.py --quick          # plumbing, on any machine
    python benchmarks/gpu_time_to_accuracy.py --recipes papers --cifar10 data
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_time_to_accuracy.md"
CONFIGS = REPO / "configs"
TARGETS = (0.94, 0.95)
CLOCK = "moderncnn.training.callbacks.FitClock"
# Seconds each run may train (Lightning's max_time); with start-up and tests about 7 min in all.
BUDGET = {"fast_cpu": 60, "resnet18_cifar10_fast": 150, "resnet18": 150}
# fashion_mnist/resnet18.yaml plans 60 epochs; 25 keep its cosine schedule whole in the budget.
OVERRIDES = {"resnet18": ["--trainer.max_epochs=25"]}
# The papers' recipes: network -> (configs/papers/<stem>_<data>.yaml, the paper's CIFAR-10 test
# error in %: He et al. 2016 Table 6, Huang et al. 2017 Table 2, both with augmentation).
PAPERS = {
    "resnet20": ("resnet", 8.75),
    "resnet56": ("resnet", 6.97),
    "resnet110": ("resnet", 6.43),
    "densenet_bc_100": ("densenet_bc", 4.51),
}
# The paper warms ResNet-110 up (0.01 for ~400 iterations): a linear warm-up over one epoch.
PAPER_OVERRIDES = {"resnet110": ["--model.warmup_epochs=1"]}
QUICK_ARGS = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.accelerator=auto",
]


def cifar_recipe_on_fashion_mnist(folder: Path) -> Path:
    """``resnet18_cifar10_fast.yaml`` with fast_cpu's Fashion-MNIST data section, in ``folder``."""
    recipe = yaml.safe_load((CONFIGS / "resnet18_cifar10_fast.yaml").read_text())
    fast = yaml.safe_load((CONFIGS / "fashion_mnist" / "fast_cpu.yaml").read_text())
    recipe["data"] = fast["data"]
    recipe["data"]["init_args"]["batch_size"] = 512  # the recipe's batch, for its lr
    recipe.pop("checkpoint", None)  # a validation split again: the best checkpoint by val_acc
    path = folder / "resnet18_cifar10_fast_fashion_mnist.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(
    name: str, config: Path, extra: list[str], workdir: Path, seconds: int | None = None
) -> dict[str, object]:
    """``moderncnn fit`` of ``config`` in ``workdir``, capped at ``seconds`` (default
    :data:`BUDGET`'s for ``name``; None: uncapped)."""
    seconds = BUDGET.get(name) if seconds is None else seconds
    cmd = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", str(config)]
    cmd += [f"--trainer.callbacks+={CLOCK}", "--trainer.enable_progress_bar=false"]
    if seconds:
        hours, rest = divmod(seconds, 3600)
        cmd.append(f"--trainer.max_time=00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}")
    cmd += extra
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (metrics,) = workdir.glob("lightning_logs/version_*/metrics.csv")
    with metrics.open(newline="") as file:
        rows = list(csv.DictReader(file))
    epochs = [
        (float(r["fit_seconds"]), float(r["val_acc"]))
        for r in rows
        if r.get("fit_seconds") and r.get("val_acc")
    ]
    tests = [float(r["test_acc"]) for r in rows if r.get("test_acc")]
    reached = {target: next((s for s, acc in epochs if acc >= target), None) for target in TARGETS}
    return {
        "epochs": len(epochs),
        "fit_seconds": epochs[-1][0] if epochs else None,
        "best_val": max((acc for _, acc in epochs), default=None),
        "test_acc": tests[-1] if tests else None,
        "reached": reached,
        "wall": wall,
    }


def _s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few batches: writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    parser.add_argument(
        "--recipes", choices=["speed", "papers", "all"], default="all",
        help="speed: time to 94/95%% on Fashion-MNIST; papers: configs/papers/ (default: both)",
    )  # fmt: skip
    parser.add_argument("--cifar10", type=Path, help="folder with cifar-10-batches-py/ (papers)")
    parser.add_argument("--papers-budget", type=int, help="seconds per paper run (default: none)")
    args = parser.parse_args(argv)
    extra = QUICK_ARGS if args.quick else []
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    if not torch.cuda.is_available() and not args.quick:
        print("no CUDA GPU here: run with --quick to check the plumbing", file=sys.stderr)
        return 1
    results, papers = {}, {}
    with tempfile.TemporaryDirectory(prefix="moderncnn-gpu-tta-") as tmp:
        if args.recipes in ("papers", "all"):
            papers = run_papers(Path(tmp), args, extra)
        configs = {
            "fast_cpu": CONFIGS / "fashion_mnist" / "fast_cpu.yaml",
            "resnet18_cifar10_fast": cifar_recipe_on_fashion_mnist(Path(tmp)),
            "resnet18": CONFIGS / "fashion_mnist" / "resnet18.yaml",
        }
        for name, config in configs.items() if args.recipes != "papers" else ():
            workdir = Path(tmp) / name
            workdir.mkdir()
            results[name] = run(name, config, [*OVERRIDES.get(name, []), *extra], workdir)
            r = results[name]
            print(
                f"{name}: {r['epochs']} epochs in {_s(r['fit_seconds'])} s, best val "
                f"{_pct(r['best_val'])}%, test {_pct(r['test_acc'])}%, "
                + ", ".join(
                    f"to {t:.0%}: {_s(s)}" + " s" * (s is not None) for t, s in r["reached"].items()
                ),
                flush=True,
            )
    names = {
        "fast_cpu": "configs/fashion_mnist/fast_cpu.yaml",
        "resnet18_cifar10_fast": "resnet18_cifar10_fast.yaml's model and schedule, Fashion-MNIST",
        "resnet18": "configs/fashion_mnist/resnet18.yaml, 25 epochs",
    }
    lines = [
        "# Time to accuracy on Fashion-MNIST on one GPU",
        "",
        *(["**Quick smoke run: a few batches, the numbers mean nothing.**", ""] * args.quick),
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- device: {device}; torch {torch.__version__}, Python {platform.python_version()}",
        "",
        "| recipe | epochs | fit (s) | to 94% val (s) | to 95% val (s) | best val (%) | test (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {names[name]} | {r['epochs']} | {_s(r['fit_seconds'])} | "
            f"{_s(r['reached'][0.94])} | {_s(r['reached'][0.95])} | {_pct(r['best_val'])} | "
            f"{_pct(r['test_acc'])} |"
        )
    lines += [] if results else ["(not run: --recipes papers)"]
    lines += [
        "",
        "Time to X%: seconds since fit started at the end of the first epoch whose validation "
        "accuracy (5,000 held-out training images) reached X. Test: the best checkpoint on the "
        "10,000 test images. Each run is capped by --trainer.max_time "
        f"({', '.join(f'{k} {v} s' for k, v in BUDGET.items())}). One seed each (42, or the "
        "config's own).",
        "",
    ]
    lines += papers_table(papers, args) if papers else []
    text = "\n".join(lines)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.write_text(text)
        print(f"wrote {output}")
    return 0


def run_papers(tmp: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, dict]:
    """Each of :data:`PAPERS` with its paper's recipe, on CIFAR-10 or Fashion-MNIST."""
    data = "cifar" if args.cifar10 else "fashion_mnist"
    results = {}
    for name, (stem, _) in PAPERS.items():
        config = CONFIGS / "papers" / f"{stem}_{data}.yaml"
        options = [f"--model.model={name}", *PAPER_OVERRIDES.get(name, [])]
        if args.cifar10:
            options.append(f"--data.init_args.data_dir={args.cifar10.resolve()}")
        workdir = tmp / f"paper_{name}"
        workdir.mkdir()
        r = run(name, config, [*options, *extra], workdir, args.papers_budget or 0)
        r["config"] = config.relative_to(REPO).as_posix()
        results[name] = r
        print(f"{name} ({r['config']}): {r['epochs']} epochs in {_s(r['fit_seconds'])} s, "
              f"test {_pct(r['test_acc'])}%", flush=True)  # fmt: skip
    return results


def papers_table(papers: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """The README's "paper vs ours" rows: our test error beside the paper's CIFAR-10 one."""
    data = "CIFAR-10" if args.cifar10 else "Fashion-MNIST (not comparable with the papers')"
    cap = f"capped at {args.papers_budget} s each" if args.papers_budget else "full schedules"
    lines = [
        "",
        f"## The papers' recipes ({data}; {cap})",
        "",
        "| network | config | epochs | fit (s) | our test error (%) | paper, CIFAR-10 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in papers.items():
        error = None if r["test_acc"] is None else 1 - r["test_acc"]
        lines.append(
            f"| {name} | {r['config']} | {r['epochs']} | {_s(r['fit_seconds'])} "
            f"| {_pct(error)} | {PAPERS[name][1]:.2f} |"
        )
    lines += [
        "",
        "Our test error: the best checkpoint (by validation accuracy on 5,000 held-out training "
        "images) on the 10,000 test images, one seed. The papers': He et al. 2016 Table 6, "
        "Huang et al. 2017 Table 2 (C10+).",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
