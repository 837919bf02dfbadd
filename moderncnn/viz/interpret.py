"""What a test says beyond its accuracy: the class pairs most often confused (fastai's
``most_confused``), and the worst test images with where the network looked."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moderncnn.io.errors import ConfigError
from moderncnn.io.safe_text import plain_text_label

from ._figure import finish, new_figure
from .confusion import read_confusion_matrix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MOST_CONFUSED_CSV", "most_confused", "plot_most_confused", "write_most_confused"]

MOST_CONFUSED_CSV = "most_confused.csv"


def most_confused(
    source: str | Path | Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    n: int = 10,
    min_count: int = 1,
) -> list[tuple[str, str, int]]:
    """The ``n`` (true, predicted, count) pairs of different classes with the most images,
    most first, from a confusion matrix (counts, its CSV or a run folder)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(source, str | Path):
        counts, names = read_confusion_matrix(source)
        names = list(class_names) if class_names is not None else names
    else:
        counts = torch.as_tensor(source)
        names = list(class_names) if class_names is not None else None
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ConfigError(f"a confusion matrix is square, got shape {tuple(counts.shape)}")
    names = names or [str(i) for i in range(len(counts))]
    if len(names) != len(counts):
        raise ConfigError(f"{len(names)} class names for a {len(counts)}-class matrix")
    off = counts.clone().long()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True, stable=True)
    pairs = []
    for value, index in zip(values.tolist(), flat.tolist(), strict=True):
        if value < min_count or len(pairs) == n:
            break
        true, predicted = divmod(index, len(counts))
        pairs.append((names[true], names[predicted], value))
    return pairs


def write_most_confused(path: str | Path, pairs: Sequence[tuple[str, str, int]]) -> Path:
    """``true,predicted,images`` rows (names already made spreadsheet-safe by the caller)."""
    path = Path(path)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true", "predicted", "images"])
        writer.writerows(pairs)
    return path


def plot_most_confused(
    source: str | Path | Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    n: int = 10,
    save: str | Path | None = None,
) -> Figure:
    """A bar per confused pair, "true -> predicted", longest (most images) at the top."""
    pairs = most_confused(source, class_names, n)
    figure = new_figure(figsize=(6, 0.9 + 0.32 * max(len(pairs), 1)))
    ax = figure.add_subplot()
    if not pairs:
        ax.text(0.5, 0.5, "no confused pairs: every image was right", ha="center", va="center")
        ax.axis("off")
        return finish(figure, save)
    labels = [f"{plain_text_label(t)} \u2192 {plain_text_label(p)}" for t, p, _ in pairs][::-1]
    counts = [c for _, _, c in pairs][::-1]
    ax.barh(range(len(pairs)), counts, color="#cf222e")
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_xlabel("test images (true \u2192 predicted)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images: no 0.5 ticks
    for row, count in enumerate(counts):
        ax.text(count, row, f" {count}", va="center", fontsize=8)
    ax.set_title(f"the {len(pairs)} most confused pairs")
    figure.tight_layout()
    return finish(figure, save)
