"""Learning curves of a run from its ``metrics.csv``: loss, accuracy, top-5 and learning rate.

The x axis is the epoch as Lightning counts it, from 0: the point at epoch 3 is the epoch
that wrote ``best-epoch=3-...ckpt``. ``moderncnn plot lightning_logs/version_N`` draws it
into ``curves.png``.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderncnn.io.errors import DataError, MissingFileError

from ._figure import finish, new_figure
from ._run_folder import LinkOutsideError, read_text, run_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_curves", "read_learning_rates", "read_metrics", "show_curves"]

RunSource = str | Path | Sequence[str | Path]
# Panels: (y label, metrics); top-5 has its own axis, so top-1 differences stay readable.
PANELS = [
    ("loss", ("train_loss", "val_loss")),
    ("accuracy", ("train_acc", "val_acc")),
    ("top-5 accuracy", ("train_acc_top5", "val_acc_top5")),
]


def metrics_file(run: str | Path) -> Path:
    """``run`` itself if it is a ``.csv`` file, else ``run/metrics.csv``; it must exist."""
    path = Path(run)
    if path.suffix != ".csv":
        if path.is_dir():
            run_file(path, "metrics.csv")  # its own file: a link leading out of it is refused
        path = path / "metrics.csv"
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist; give a run folder that has metrics.csv "
            "(lightning_logs/version_N, written by the CSV logger)"
        )
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv, each cell checked to be a number (epoch and step finite),
    so a hand-edited or cut file is one message naming its line, not a traceback."""
    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        rows = list(reader)
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    for line, row in enumerate(rows, start=2):
        if None in row:
            raise DataError(
                f"{path}: line {line} has more fields than the header "
                f"({len(reader.fieldnames or [])}); fix or delete that line"
            )
        for column, value in row.items():
            if not value:
                continue
            try:
                number = float(value)
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {column!r}: {value!r} is not a number"
                ) from None
            if column in ("epoch", "step") and not (math.isfinite(number) and number >= 0):
                raise DataError(
                    f"{path}: line {line}: {column} must be a whole number >= 0, got {value!r}"
                )
    return rows


def read_metrics(metrics_csv: str | Path) -> dict[int, dict[str, float]]:
    """Per-epoch metrics of a Lightning ``metrics.csv``: {epoch: {name: value}}.

    Lightning writes one sparse row per logging call (training and validation metrics of the
    same epoch land in different rows), so the rows are merged by their ``epoch`` column.
    """
    path = metrics_file(metrics_csv)
    epochs: dict[int, dict[str, float]] = {}
    for row in _rows(path):
        if not row.get("epoch"):
            continue  # the learning rate is logged at a step, not an epoch
        merged = epochs.setdefault(int(float(row["epoch"])), {})
        merged.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    if not epochs:
        raise DataError(f"{path} has no rows with an epoch: was any epoch finished?")
    return dict(sorted(epochs.items()))


def read_learning_rates(metrics_csv: str | Path) -> dict[str, list[tuple[float, float]]]:
    """{name: [(epoch, lr), ...]} of the ``lr-*`` columns (``LearningRateLog``, or Lightning's
    ``LearningRateMonitor``).

    Both log the optimiser step, not the epoch; a step is placed in its epoch by the
    steps at which the epochs' metrics were logged (epoch 2.5: halfway through epoch 2).
    """
    rows = _rows(metrics_file(metrics_csv))
    ends: dict[int, int] = {}  # epoch -> its last step, from the training/validation rows
    for row in rows:
        if row.get("epoch") and row.get("step") and _has(row, ("train_", "val_")):
            epoch, step = int(float(row["epoch"])), int(float(row["step"]))
            ends[epoch] = max(ends.get(epoch, step), step)
    epochs = sorted(ends)
    last_steps = [ends[e] for e in epochs]
    rates: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith("lr-") and value and row.get("step"):
                x = _epoch_of(int(float(row["step"])), epochs, last_steps)
                rates.setdefault(name, []).append((x, float(value)))
    return rates


def _has(row: dict[str, str], prefixes: tuple[str, ...]) -> bool:
    return any(v and k.startswith(prefixes) for k, v in row.items())


def _epoch_of(step: int, epochs: list[int], last_steps: list[int]) -> float:
    """The fractional epoch of a step at which a batch starts (0-based steps)."""
    if not epochs:
        return float(step)
    i = min(bisect.bisect_left(last_steps, step), len(epochs) - 1)
    first = last_steps[i - 1] + 1 if i > 0 else 0
    length = max(last_steps[i] - first + 1, 1)
    return epochs[i] + (step - first) / length


def plot_curves(
    run: RunSource, save: str | Path | bool | None = None, title: str | None = None
) -> Figure:
    """Loss, accuracy, top-5 accuracy (with more than 5 classes) and learning rate per epoch.

    Args:
        run: a run folder (lightning_logs/version_N) or its metrics.csv; several (a run and
            its resumption) are merged in order, later ones winning.
        save: file to write the figure to (a .png); True: curves.png beside the run's
            metrics.csv; None: only return it.
        title: the figure's title; default: the model's name and the run folder.
    """
    files = [run] if isinstance(run, str | Path) else list(run)
    if save is True:
        save = metrics_file(files[0]).parent / "curves.png" if files else None
    if not files:
        raise DataError("plot_curves needs a run folder or metrics.csv, got an empty list")
    epochs, rates = _merged_metrics(files)
    panels = [(label, names) for label, names in PANELS if _any(epochs, names)]
    figure = new_figure(figsize=(4.2 * (len(panels) + 1), 3.8))
    axes = figure.subplots(1, len(panels) + 1, squeeze=False)[0]
    plotted = {name for _, names in panels for name in names}
    last_epoch = max((e for e, m in epochs.items() if plotted & set(m)), default=0)
    for ax, (label, names) in zip(axes, panels, strict=False):
        _plot_epochs(ax, epochs, names)
        ax.set_xlim(-0.25, max(last_epoch, 1) + 0.25)  # two integers in view: integer ticks
        _style(ax, label)
    _plot_rates(axes[-1], rates)
    axes[-1].set_xlim(0, max(last_epoch + 1, 2))
    last = metrics_file(files[-1]).parent
    figure.suptitle(title or f"{_model_name(last) or 'model'}: {last}")
    return finish(figure, save)


def _merged_metrics(
    files: list[str | Path],
) -> tuple[dict[int, dict[str, float]], dict[str, list[tuple[float, float]]]]:
    """Per-epoch metrics and learning-rate points of several metrics files, later ones winning."""
    epochs: dict[int, dict[str, float]] = {}
    rates: dict[str, list[tuple[float, float]]] = {}
    for file in files:
        for epoch, metrics in read_metrics(file).items():
            epochs.setdefault(epoch, {}).update(metrics)
        for name, points in read_learning_rates(file).items():
            rates.setdefault(name, []).extend(points)
    return epochs, rates


def _plot_epochs(ax: Axes, epochs: dict[int, dict[str, float]], names: Sequence[str]) -> None:
    for name in names:
        points = [(e, m[name]) for e, m in sorted(epochs.items()) if name in m]
        if points:
            ax.plot(*zip(*points, strict=True), "-o", label=name, markersize=3)


def _any(epochs: dict[int, dict[str, float]], names: Sequence[str]) -> bool:
    return any(name in m for m in epochs.values() for name in names)


def _style(ax: Axes, label: str) -> None:
    ax.set(xlabel="epoch", ylabel=label)
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs as the checkpoints name them
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def _plot_rates(ax: Axes, rates: dict[str, list[tuple[float, float]]]) -> None:
    seen: list[list[tuple[float, float]]] = []
    for name, points in sorted(rates.items()):
        points = sorted(points)
        if points in seen:  # parameter groups sharing one rate: one line
            continue
        seen.append(points)
        ax.plot(*zip(*points, strict=True), "-", label=name, markersize=2)
    if not seen:
        ax.text(0.5, 0.5, "no learning rate logged\n(no lr-* column in metrics.csv)", ha="center",
                va="center", transform=ax.transAxes, color="gray")  # fmt: skip
    _style(ax, "learning rate")


def _model_name(run_dir: Path) -> str | None:
    """The ``model:`` name in the run's ``hparams.yaml`` (None for a model passed as a module)."""
    try:
        hparams = run_file(run_dir, "hparams.yaml")
    except LinkOutsideError:
        return None
    if hparams is None:
        return None
    found = re.search(r"^model: *([\w.-]+) *$", read_text(hparams), re.M)
    return found.group(1) if found else None


def show_curves(figure: Figure, arguments: dict[str, Any]) -> int:
    """What ``moderncnn plot`` prints: the file written."""
    save = arguments.get("save")
    run = arguments["run"]
    if save is True:
        save = metrics_file(run if isinstance(run, str | Path) else run[0]).parent / "curves.png"
    print(save if save else "not saved: give --out FILE.png")
    return 0
