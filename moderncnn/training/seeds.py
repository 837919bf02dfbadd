"""``moderncnn fit -c CONFIG --seeds N``: the config once per seed, and the spread of the results.

One run's accuracy is an anecdote (airbench's rule): a change of a few tenths of a point is
often within the seed-to-seed spread. ``--seeds 3`` runs seeds 0, 1, 2 (``--seeds 5,7,9`` the
ones given), each a normal ``moderncnn fit`` into its own ``version_N`` folder, one after
another in this process. Beside the runs (in ``lightning_logs/``) it writes:

- ``seeds_K.csv``: one row per seed: seed, run folder, wall seconds, best validation accuracy
  and every test metric (the config's ``test_after_fit: true`` tests the best checkpoint);
- ``seeds_K.md``: the command, and each metric's mean ± sample standard deviation,

``K`` the next free number, so an earlier summary is never overwritten. A failing seed stops
the series; the seeds that finished are still summarised.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.errors import ConfigError

from .callbacks import run_dir

__all__ = [
    "NO_SPREAD",
    "SeedRun",
    "format_mean_std",
    "mean_std",
    "parse_seeds",
    "pop_seeds",
    "percent",
    "print_summary",
    "run_seeds",
    "summarize",
    "write_summary",
]

MAX_SEEDS = 100
NO_SPREAD = "–"  # what one seed shows for the spread: it has none (not 0, not nan)


@dataclass
class SeedRun:
    """One seed's run: where it wrote, how long it took, what it measured."""

    seed: int
    folder: Path | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> [0, 1, 2]; ``"5,7,9"`` -> [5, 7, 9]; a ConfigError naming ``--seeds`` else."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if not numbers:
        raise ConfigError(
            f"--seeds {text!r}: give a count (--seeds 3: seeds 0, 1, 2) or a list (--seeds 5,7,9)"
        )
    seeds = list(range(numbers[0])) if len(numbers) == 1 else numbers
    if not seeds or len(seeds) > MAX_SEEDS or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"--seeds {text!r}: need 1 to {MAX_SEEDS} different seeds, each >= 0 "
            "(a count like 3, or a list like 5,7,9)"
        )
    return seeds


def pop_seeds(argv: Sequence[str]) -> tuple[list[int] | None, list[str]]:
    """The seeds of a ``--seeds`` argument (None if absent) and the arguments without it."""
    rest, seeds, args = [], None, list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--seeds" or arg.startswith("--seeds="):
            if arg == "--seeds":
                if i + 1 >= len(args):
                    raise ConfigError("--seeds needs a value: a count (3) or a list (5,7,9)")
                value, i = args[i + 1], i + 2
            else:
                value, i = arg.split("=", 1)[1], i + 1
            if seeds is not None:
                raise ConfigError("--seeds is given twice; give it once")
            seeds = parse_seeds(value)
            continue
        rest.append(arg)
        i += 1
    if seeds is not None:
        seeded = [a for a in rest if a.split("=")[0] in ("--seed_everything", "--seed-everything")]
        if seeded:
            raise ConfigError(
                f"--seeds sets each run's seed; leave out {seeded[0].split('=')[0]} "
                "(or run a single seed without --seeds)"
            )
    return seeds, rest


def run_seeds(
    argv: Sequence[str], seeds: Sequence[int], fit: Callable[[list[str]], Any]
) -> list[SeedRun]:
    """Runs ``fit([*argv, "--seed_everything=S"])`` for each seed S, in this process.

    ``argv`` is ``moderncnn``'s (``["fit", "-c", ...]``); ``fit`` returns the finished CLI
    (:func:`~moderncnn.training.cli.build_cli`), whose trainer holds the run's metrics.
    """
    runs: list[SeedRun] = []
    for seed in seeds:
        print(f"\n=== seed {seed} ({len(runs) + 1} of {len(seeds)}) ===", flush=True)
        start = time.perf_counter()
        try:
            cli = fit([*argv, f"--seed_everything={seed}"])
        except BaseException:
            if runs:
                write_summary(runs, argv)
            raise
        seconds = time.perf_counter() - start
        runs.append(SeedRun(seed, run_dir(cli.trainer), seconds, _metrics(cli.trainer)))
    return runs


def _metrics(trainer: object) -> dict[str, float]:
    """Best validation accuracy (from the checkpoint callback) and every logged test metric."""
    metrics: dict[str, float] = {}
    best = getattr(trainer, "checkpoint_callback", None)
    if isinstance(best, ModelCheckpoint) and best.best_model_score is not None:
        metrics[f"best_{best.monitor}"] = float(best.best_model_score)
    for name, value in getattr(trainer, "callback_metrics", {}).items():
        if name.startswith("test_"):
            metrics[name] = float(value)
    return metrics


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the finite values; the std is nan for fewer
    than two values (one seed has no spread), both are nan for none. Every summary over seeds
    (``fit --seeds``, ``compare``) computes its spread here."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return mean, std, len(finite)


def format_mean_std(mean: float, std: float, number: Callable[[float], str]) -> str:
    """``"92.31% ± 0.12%"`` with ``number`` formatting each side; a spread that does not exist
    (nan: one seed) shows as ``"–"``."""
    return f"{number(mean)} ± {NO_SPREAD if math.isnan(std) else number(std)}"


def percent(value: float) -> str:
    """An accuracy as every seeds summary writes it: ``0.9231`` -> ``"92.31%"``."""
    return NO_SPREAD if math.isnan(value) else f"{value:.2%}"


def summarize(runs: Sequence[SeedRun]) -> dict[str, tuple[float, float, int]]:
    """Metric (and ``seconds``) -> (mean, sample standard deviation, n); std is nan for n = 1."""
    columns = ["seconds", *dict.fromkeys(name for run in runs for name in run.metrics)]
    summary = {}
    for column in columns:
        values = [run.seconds if column == "seconds" else run.metrics.get(column) for run in runs]
        mean, std, n = mean_std(values)
        if n:
            summary[column] = (mean, std, n)
    return summary


def write_summary(runs: Sequence[SeedRun], argv: Sequence[str]) -> tuple[Path, Path] | None:
    """Writes ``seeds_K.csv`` and ``seeds_K.md`` beside the runs; returns their paths."""
    folders = [run.folder for run in runs if run.folder is not None]
    if not folders:
        return None
    root = folders[0].parent
    k = 0
    while (root / f"seeds_{k}.csv").exists() or (root / f"seeds_{k}.md").exists():
        k += 1
    csv_path, md_path = root / f"seeds_{k}.csv", root / f"seeds_{k}.md"
    names = list(dict.fromkeys(name for run in runs for name in run.metrics))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["seed", "run", "seconds", *names])
    for run in runs:
        values = [f"{run.metrics[n]:.6g}" if n in run.metrics else "" for n in names]
        writer.writerow([run.seed, run.folder or "", f"{run.seconds:.1f}", *values])
    atomic_write_text(csv_path, table.getvalue())
    atomic_write_text(md_path, summary_markdown(runs, argv))
    return csv_path, md_path


def summary_markdown(runs: Sequence[SeedRun], argv: Sequence[str]) -> str:
    seeds = ", ".join(str(run.seed) for run in runs)
    lines = [
        f"# {len(runs)} seeds: {seeds}",
        "",
        f"`moderncnn {shlex.join(argv)} --seed_everything=S` for each seed S",
        "",
        "| metric | mean ± std | min | max | n |",
        "|---|---|---|---|---|",
    ]
    for name, (mean, std, n) in summarize(runs).items():
        values = [run.seconds if name == "seconds" else run.metrics.get(name) for run in runs]
        values = [v for v in values if v is not None]
        lines.append(
            f"| {name} | {format_mean_std(mean, std, partial(_number, name=name))} | "
            f"{_number(min(values), name)} | {_number(max(values), name)} | {n} |"
        )
    lines += ["", "Runs: " + ", ".join(str(run.folder) for run in runs), ""]
    return "\n".join(lines)


def _number(value: float, name: str) -> str:
    if math.isnan(value):
        return NO_SPREAD
    if name == "seconds":
        return f"{value:.1f} s"
    return percent(value) if "acc" in name else f"{value:.4f}"


def print_summary(runs: Sequence[SeedRun], written: tuple[Path, Path] | None) -> None:
    print(f"\n{len(runs)} seeds ({', '.join(str(run.seed) for run in runs)}):")
    for name, (mean, std, n) in summarize(runs).items():
        spread = format_mean_std(mean, std, partial(_number, name=name))
        print(f"  {name:<16} {spread}  (n = {n})")
    if written:
        print(f"summary: {written[1]}  (per seed: {written[0]})")
