"""Figures of a training run: learning curves, confusion matrix and a grid of input images.

``moderncnn plot lightning_logs/version_N`` draws the curves of a run from its ``metrics.csv``;
``moderncnn preview -c CONFIG`` shows one batch the way the model sees it, augmentation
included, which is the quickest check that a data config does what it should.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from torch import Tensor

__all__ = [
    "plot_curves",
    "plot_main",
    "preview_main",
    "read_metrics",
    "save_confusion_matrix",
    "save_image_grid",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(metrics_csv: str | Path) -> dict[int, dict[str, float]]:
    """Per-epoch metrics of a Lightning ``metrics.csv``: {epoch: {name: value}}.

    Lightning writes one sparse row per logging call (training and validation metrics of the
    same epoch land in different rows), so the rows are merged by their ``epoch`` column.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a run folder that has metrics.csv")
    epochs: dict[int, dict[str, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if not row.get("epoch"):
                continue
            merged = epochs.setdefault(int(float(row["epoch"])), {})
            merged.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    if not epochs:
        raise ValueError(f"{path} has no rows with an epoch: was any epoch finished?")
    return dict(sorted(epochs.items()))


def plot_curves(
    metrics_csv: str | Path | Sequence[str | Path], output: str | Path, title: str | None = None
) -> Path:
    """Loss and accuracy per epoch (training and validation) of a run, side by side, as a PNG.

    Several ``metrics.csv`` (a run and its resumption) are merged in order, later ones winning.
    """
    files = [metrics_csv] if isinstance(metrics_csv, str | Path) else list(metrics_csv)
    epochs: dict[int, dict[str, float]] = {}
    for file in files:
        for epoch, metrics in read_metrics(file).items():
            epochs.setdefault(epoch, {}).update(metrics)
    epochs = dict(sorted(epochs.items()))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = [("loss", ["train_loss", "val_loss"]), ("accuracy", ["train_acc", "val_acc"])]
    for ax, (ylabel, names) in zip(axes, panels, strict=True):
        for name in names + [n + "_top5" for n in names if ylabel == "accuracy"]:
            points = [(e + 1, m[name]) for e, m in epochs.items() if name in m]
            if points:
                style = "--" if name.endswith("_top5") else "-o"
                ax.plot(*zip(*points, strict=True), style, label=name, markersize=3)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title or str(Path(files[-1]).parent))
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def save_confusion_matrix(
    confusion: Sequence[Sequence[int]] | Tensor,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows: true class, columns: predicted; colour is the row-normalised rate, text the count."""
    counts = torch.as_tensor(confusion, dtype=torch.long).cpu()
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix is {tuple(counts.shape)} but there are {n} classes")
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    plt = _pyplot()
    side = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:  # counts stay legible up to about this many classes
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_image_grid(
    images: Tensor, labels: Tensor, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """A grid of [0, 1] float images (N x C x H x W), each titled with its class name."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N x 1 or N x 3 x H x W images, got {tuple(images.shape)}")
    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images.clamp(0, 1), labels.tolist(), strict=False):
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(class_names[label], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_main(argv: list[str]) -> int:
    """``moderncnn plot RUN_DIR [-o PNG]``: learning curves of a run."""
    parser = argparse.ArgumentParser(prog="moderncnn plot", description=plot_main.__doc__)
    parser.add_argument("run", help="run folder with metrics.csv (lightning_logs/version_N)")
    parser.add_argument("-o", "--output", help="PNG to write (default: RUN/curves.png)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    metrics_csv = run if run.suffix == ".csv" else run / "metrics.csv"
    output = Path(args.output) if args.output else metrics_csv.parent / "curves.png"
    try:
        print(plot_curves(metrics_csv, output))
    except (FileNotFoundError, ValueError) as err:
        print(f"moderncnn plot: error: {err}", file=sys.stderr)
        return 1
    return 0


def datamodule_from_config(config_path: str | Path) -> Any:
    """The data module of a training config's ``data:`` section, not yet set up."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    import moderncnn.data  # noqa: F401  (lets a config name our data modules by class name)

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict) or "data" not in config:
        raise ValueError(f"{path}: no `data:` section (class_path and init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    parsed = parser.parse_object({"data": config["data"]})
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parsed).data


def preview_main(argv: list[str]) -> int:
    """``moderncnn preview -c CONFIG [-o PNG] [-n N]``: one batch of the config's data."""
    parser = argparse.ArgumentParser(prog="moderncnn preview", description=preview_main.__doc__)
    parser.add_argument("-c", "--config", required=True, help="training YAML with a data: section")
    parser.add_argument("-o", "--output", default="preview.png", help="PNG to write")
    parser.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    args = parser.parse_args(argv)
    try:
        data = datamodule_from_config(args.config)
        images, labels = data.preview_batch(n=args.n, split=args.split)
        augmented = " (augmented)" if args.split == "train" else ""
        title = f"{type(data).__name__}: {args.split}{augmented}"
        print(save_image_grid(images, labels, data.class_names, args.output, title))
    except (FileNotFoundError, ValueError, ArgumentError) as err:
        print(f"moderncnn preview: error: {err}", file=sys.stderr)
        return 1
    return 0
