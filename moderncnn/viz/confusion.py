"""The confusion matrix of a test: rows are the true class, columns the predicted one."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moderncnn.io.errors import DataError, MissingFileError

from ._figure import finish, new_figure
from ._run_folder import read_text, run_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CONFUSION_CSV", "plot_confusion_matrix", "read_confusion_matrix"]

# Written beside metrics.csv by the test of a run (ConfusionMatrixReport).
CONFUSION_CSV = "confusion_matrix.csv"
MAX_ANNOTATED_CLASSES = 30  # counts stay legible up to about this many classes


def read_confusion_matrix(path: str | Path) -> tuple[Tensor, list[str]]:
    """The counts (true x predicted) and class names of a run's ``confusion_matrix.csv``."""
    path = Path(path)
    if path.is_dir():
        run_file(path, CONFUSION_CSV)  # the run's own file: a link leading out of it is refused
        path = path / CONFUSION_CSV
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist; test the run first (`trainer.test(...)` or "
            "`moderncnn test`), which writes it"
        )
    try:
        header, *rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    except (csv.Error, ValueError) as err:  # not CSV, or empty
        raise DataError(f"{path}: not a confusion matrix CSV ({err or 'empty'})") from err
    names = header[1:]
    try:
        counts = torch.tensor([[int(v) for v in row[1:]] for row in rows], dtype=torch.long)
    except ValueError as err:
        raise DataError(f"{path}: counts must be whole numbers ({err})") from err
    if counts.shape != (len(names), len(names)):
        raise DataError(f"{path}: {tuple(counts.shape)} counts for {len(names)} classes")
    return counts, names


def write_confusion_matrix(path: str | Path, counts: Tensor, class_names: Sequence[str]) -> Path:
    """Writes the counts with the class names as the header row and first column."""
    path = Path(path)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, counts.tolist(), strict=True):
            writer.writerow([name, *row])
    return path


def plot_confusion_matrix(
    source: str | Path | Sequence[Sequence[int]] | Tensor,
    class_names: Sequence[str] | None = None,
    save: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Colour: the row-normalised rate (recall of each true class); text: the count.

    Args:
        source: a tested run folder (or its ``confusion_matrix.csv``), or the counts.
        class_names: names of the rows; default: the run's, or the class indices.
        save: file to write the figure to; None: only return it.
        title: default: the overall accuracy.
    """
    if isinstance(source, str | Path):
        counts, names = read_confusion_matrix(source)
        names = list(class_names) if class_names is not None else names
    else:
        counts = torch.as_tensor(source, dtype=torch.long).cpu()
        names = (
            list(class_names) if class_names is not None else [str(i) for i in range(len(counts))]
        )
    n = len(names)
    if counts.shape != (n, n):
        raise DataError(f"confusion matrix is {tuple(counts.shape)} but there are {n} classes")
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = max(5.0, 0.55 * n + 2)
    figure = new_figure(figsize=(side, side))
    ax = figure.subplots()
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    accuracy = counts.diag().sum().item() / max(counts.sum().item(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"accuracy {accuracy:.2%}")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    return finish(figure, save)
