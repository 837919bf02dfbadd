"""The degradation problem, drawn as the ResNet paper's Fig. 6: training and validation error
against optimiser steps for plain and residual networks of several depths.

He et al. 2016 (section 4.2, Fig. 6): a deeper *plain* network has a higher training error
than a shallower one, so the fault is optimisation, not overfitting; with shortcuts the
deeper network is the better one. The runs are ``metrics.csv`` folders whose model logged
``train_acc_window`` (``ImageClassifier(curve_every_n_steps=...)``) and validated every few
steps, e.g. the trials of ``moderncnn compare -c configs/papers/degradation.yaml``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moderncnn.io.errors import DataError, MissingFileError

from ._figure import finish, new_figure
from .curves import _rows, metrics_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_degradation", "read_step_curves", "runs_of_compare"]

RunFolders = str | Path | Sequence[str | Path]
# Panel title -> the accuracy column it draws as error.
PANELS = {"training error": "train_acc_window", "validation error": "val_acc"}


def read_step_curves(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{column: [(steps done, value), ...]} of a run's step-logged metrics: the training
    window's loss and accuracy and each validation's, in step order."""
    wanted = ("train_loss_window", "train_acc_window", "val_loss", "val_acc")
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in _rows(metrics_file(run)):
        if not row.get("step"):
            continue
        steps = int(float(row["step"])) + 1  # Lightning logs the 0-based index of the last step
        for name in wanted:
            if row.get(name):
                curves.setdefault(name, []).append((steps, float(row[name])))
    return {name: sorted(points) for name, points in curves.items()}


def runs_of_compare(out: str | Path) -> dict[str, list[Path]]:
    """{model: [seed folders]} of a ``moderncnn compare --out OUT`` folder (``OUT/runs/``)."""
    root = Path(out) / "runs"
    if not root.is_dir():
        raise MissingFileError(f"{root} does not exist; give the --out folder of a compare")
    runs = {
        model.name: sorted(p for p in model.glob("seed*") if (p / "metrics.csv").is_file())
        for model in sorted(root.iterdir())
        if model.is_dir()
    }
    return {name: seeds for name, seeds in runs.items() if seeds}


def plot_degradation(
    runs: Mapping[str, RunFolders] | str | Path,
    save: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Training and validation error (%) against steps, one line per network (its seeds'
    mean; the band spans the seeds), as He et al.'s Fig. 6.

    Args:
        runs: {network name: its run folder, or one folder per seed}, or the ``--out`` folder
            of a ``moderncnn compare``. Names starting with ``plain`` are drawn dashed; names
            ending in the same number (``plain20``, ``resnet20``) share a colour.
        save: file to write the figure to; None: only return it.
        title: the figure's title; default: what the line styles and colours mean.
    """
    if isinstance(runs, str | Path):
        runs = runs_of_compare(runs)
    if not runs:
        raise DataError("plot_degradation needs at least one run, got none")
    depths = sorted({_depth(name) for name in runs}, key=lambda d: (d is None, d or 0))
    colours = {depth: f"C{i % 10}" for i, depth in enumerate(depths)}
    figure = new_figure(figsize=(11, 4.2))
    axes = figure.subplots(1, len(PANELS), sharey=True)
    for name in sorted(runs, key=lambda n: (_depth(n) or 0, not n.startswith("plain"), n)):
        folders = [runs[name]] if isinstance(runs[name], str | Path) else list(runs[name])
        curves = [read_step_curves(folder) for folder in folders]
        style = {
            "color": colours[_depth(name)],
            "linestyle": "--" if name.startswith("plain") else "-",
            "label": name,
        }
        for ax, column in zip(axes, PANELS.values(), strict=True):
            _plot_mean(ax, [c.get(column, []) for c in curves], style)
    for ax, label in zip(axes, PANELS, strict=True):
        ax.set(xlabel="optimiser steps", title=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[0].legend()
    seeds = max(len([f] if isinstance(f, str | Path) else f) for f in runs.values())
    figure.suptitle(
        title
        or "Plain (dashed) and residual (solid) networks, one colour per depth "
        f"({seeds} seed(s): mean, band = range)"
    )
    return finish(figure, save)


def _depth(name: str) -> int | None:
    found = re.search(r"(\d+)$", name)
    return int(found.group(1)) if found else None


def _plot_mean(ax, seeds: list[list[tuple[int, float]]], style: dict) -> None:
    """The mean error over seeds at the steps every seed logged, and the seeds' range."""
    common = set.intersection(*(set(dict(points)) for points in seeds)) if seeds else set()
    steps = sorted(common)
    if not steps:
        return
    errors = [[100 * (1 - dict(points)[s]) for points in seeds] for s in steps]
    ax.plot(steps, [statistics.fmean(e) for e in errors], **style)
    if len(seeds) > 1:
        low, high = [min(e) for e in errors], [max(e) for e in errors]
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, linewidth=0)
