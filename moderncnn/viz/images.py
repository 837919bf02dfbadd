"""Image grids: a batch as the model sees it, predictions beside the truth, the worst mistakes.

Each takes a data module (ours, or any whose data loaders yield ``(images, labels)``) and,
for predictions, a model: an ``nn.Module`` (a LightningModule too) or the path of a trained
model file (:func:`moderncnn.inference.load_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moderncnn.inference import load_model
from moderncnn.io.errors import ConfigError, DataError
from moderncnn.io.pixels import denormalize
from moderncnn.io.safe_text import plain_text_label

from ._figure import finish, new_figure
from .gradcam import eval_mode, grad_cam, network_and_card, overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["image_grid", "loss_titles", "plot_top_losses", "show_batch", "show_results"]

SPLITS = ("train", "val", "test")
RIGHT, WRONG = "#1a7f37", "#cf222e"  # title colours of a right and a wrong prediction


def image_grid(
    images: Tensor,
    titles: Sequence[str],
    colors: Sequence[str] | None = None,
    title: str = "",
    save: str | Path | None = None,
    cols: int = 8,
    heatmaps: Tensor | None = None,
) -> Figure:
    """A grid of [0, 1] float images (N x 1 or 3 x H x W), each with its own title; with
    ``heatmaps`` (N x H x W in [0, 1], e.g. Grad-CAM's) each drawn over its image."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"expected N x 1 or N x 3 x H x W images, got {tuple(images.shape)}")
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    figure = new_figure(figsize=(1.6 * cols, (1.5 + 0.25 * lines) * rows + 0.4))
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    colors = colors or ["black"] * n
    maps = [None] * n if heatmaps is None else list(heatmaps.detach().cpu())
    for ax, image, text, color, heat in zip(
        axes.flat, images.detach().cpu(), titles, colors, maps, strict=False
    ):
        if heat is not None:
            ax.imshow(overlay(image, heat))
        elif image.shape[0] == 1:
            ax.imshow(image[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(text, fontsize=8, color=color)
    if title:
        figure.suptitle(title)
    return finish(figure, save)


def show_batch(
    datamodule: Any,
    n: int = 32,
    split: str = "train",
    save: str | Path | None = None,
    cols: int = 8,
) -> Figure:
    """``n`` images of ``split`` titled with their class names; "train": augmented, as in
    training. The quickest check that a data config does what it should."""
    _check_request(n, split)
    if hasattr(datamodule, "preview_batch"):
        images, labels = datamodule.preview_batch(n=n, split=split)
    else:
        images, labels, _ = _take(_batches(datamodule, split), n, datamodule)
    names = _class_names(None, datamodule, labels)
    augmented = " (augmented)" if split == "train" else ""
    title = f"{type(datamodule).__name__}: {split}{augmented}"
    return image_grid(images, [names[i] for i in labels.tolist()], None, title, save, cols)


def show_results(
    model: nn.Module | str | Path,
    datamodule: Any,
    n: int = 16,
    split: str = "val",
    save: str | Path | None = None,
    cols: int = 8,
) -> Figure:
    """The first ``n`` images of ``split``, titled "true / predicted" (red when wrong)."""
    _check_request(n, split)
    predict, model_names = _predictor(model)
    images, labels, inputs = _take(_batches(datamodule, split), n, datamodule)
    predicted = predict(inputs, datamodule).argmax(1)
    names = _class_names(model_names, datamodule, torch.cat([labels, predicted]))
    titles = [
        f"{names[t]}\n{names[p]}" for t, p in zip(labels.tolist(), predicted.tolist(), strict=True)
    ]
    colors = [RIGHT if t == p else WRONG for t, p in zip(labels, predicted, strict=True)]
    right = int((labels == predicted).sum())
    title = f"{split}: true (top) / predicted (bottom), {right} of {len(labels)} right"
    return image_grid(images, titles, colors, title, save, cols)


def plot_top_losses(
    model: nn.Module | str | Path,
    datamodule: Any,
    k: int = 9,
    split: str = "val",
    max_images: int | None = None,
    save: str | Path | None = None,
    cols: int = 3,
    gradcam: bool = False,
) -> Figure:
    """The ``k`` images of ``split`` with the highest cross-entropy loss: the confident
    mistakes, and often the mislabelled images. Titles: true / predicted (the order of
    show_results and most_confused), loss, p(true).

    Args:
        max_images: look at only this many images of the split (default: all of them).
        gradcam: draw each image with the Grad-CAM map of its predicted class (where the
            network looked when it got it wrong); needs a torch model, not an export.
    """
    _check_request(k, split)
    predict, model_names = _predictor(model)
    kept: list[tuple[Tensor, ...]] = []  # loss, image, label, probs, model input
    seen = 0
    for display, labels, inputs in _batches_with_display(datamodule, split):
        if max_images is not None and seen >= max_images:
            break
        take = len(labels) if max_images is None else min(len(labels), max_images - seen)
        seen += take
        logits = predict(inputs[:take], datamodule).float()
        losses = F.cross_entropy(logits, labels[:take], reduction="none")
        probs = logits.softmax(1)
        kept.extend(zip(losses, display[:take], labels[:take], probs, inputs[:take], strict=True))
        kept = sorted(kept, key=lambda item: -float(item[0]))[:k]  # keep memory at k images
    if not kept:
        raise DataError(f"the {split} split of {type(datamodule).__name__} has no images")
    losses, images, labels, probs, inputs = (
        torch.stack(column) for column in zip(*kept, strict=True)
    )
    predicted = probs.argmax(1)
    maps = _gradcam_maps(model, inputs, predicted, datamodule) if gradcam else None
    names = _class_names(model_names, datamodule, torch.cat([labels, predicted]))
    titles, colors = loss_titles(names, predicted, labels, losses, probs)
    title = f"top {len(kept)} losses of {seen} {split} images\ntrue / predicted, loss, p(true)"
    return image_grid(images, titles, colors, title, save, cols, heatmaps=maps)


def _gradcam_maps(
    model: nn.Module | str | Path, inputs: Tensor, classes: Tensor, data: Any
) -> Tensor:
    """Grad-CAM maps of ``classes`` for the data module's ``inputs``."""
    network, card = network_and_card(model)
    if isinstance(model, str | Path) and card is not None and card.preprocess is not None:
        inputs = card.preprocess.normalize(_display(inputs, data))  # as in _file_predictor
    device = next(iter(network.parameters()), torch.empty(0)).device
    maps, _ = grad_cam(network, inputs.to(device), classes)
    return maps


def loss_titles(
    names: Sequence[str], predicted: Tensor, labels: Tensor, losses: Tensor, probs: Tensor
) -> tuple[list[str], list[str]]:
    """Titles ("true / predicted", loss, p(true)) and colours of a top-loss grid; class names
    drawn as written (no mathtext) and cut to fit a cell."""
    short = [plain_text_label(name, 16) for name in names]
    titles = [
        f"{short[t]} / {short[p]}\nloss {float(loss):.2f}, p {float(prob[t]):.2f}"
        for p, t, loss, prob in zip(predicted.tolist(), labels.tolist(), losses, probs, strict=True)
    ]
    colors = [
        RIGHT if t == p else WRONG for t, p in zip(labels.tolist(), predicted.tolist(), strict=True)
    ]
    return titles, colors


# -- data --------------------------------------------------------------------------------


def _check_request(n: int, split: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of images must be a positive integer, got {n!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _batches(datamodule: Any, split: str) -> Iterator[tuple[Tensor, Tensor]]:
    """Model-ready (images, labels) batches of ``split``, as the Trainer would feed them."""
    stage = {"train": "fit", "val": "validate", "test": "test"}[split]
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup(stage)
    loader = getattr(datamodule, f"{split}_dataloader")()
    if isinstance(loader, list | tuple):  # an empty list: no such split
        if not loader:
            raise DataError(f"{type(datamodule).__name__} has no {split} split; use another split")
        loader = loader[0]
    transfer = getattr(datamodule, "on_after_batch_transfer", None)
    for batch in loader:
        images, labels = batch[0], batch[1]
        if transfer is not None:  # ours normalise uint8 batches there
            images, labels = transfer((images, labels), 0)
        yield images, labels


def _display(images: Tensor, datamodule: Any) -> Tensor:
    """Normalised model inputs back to [0, 1] images for display."""
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None:
        return images.float().clamp(0, 1)
    return denormalize(images.float(), mean, std)


def _batches_with_display(datamodule: Any, split: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    for inputs, labels in _batches(datamodule, split):
        yield _display(inputs, datamodule), labels, inputs


def _take(
    batches: Iterator[tuple[Tensor, Tensor]], n: int, datamodule: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` images: display images, labels and model inputs."""
    inputs, labels = [], []
    for images, targets in batches:
        inputs.append(images)
        labels.append(targets)
        if sum(len(t) for t in labels) >= n:
            break
    if not inputs:
        raise DataError(f"{type(datamodule).__name__} yielded no images")
    x, y = torch.cat(inputs)[:n], torch.cat(labels)[:n]
    return _display(x, datamodule), y, x


def _class_names(model_names: Sequence[str] | None, datamodule: Any, labels: Tensor) -> list[str]:
    """The model's class names, else the data module's, else the class indices."""
    needed = int(labels.max()) + 1 if len(labels) else 0
    for names in (model_names, getattr(datamodule, "class_names", None)):
        if names is not None and len(names) >= needed:
            return [str(name) for name in names]
    return [str(i) for i in range(needed)]


# -- models ------------------------------------------------------------------------------

Predictor = Callable[[Tensor, Any], Tensor]  # (model inputs, data module) -> logits


def _predictor(model: nn.Module | str | Path) -> tuple[Predictor, list[str] | None]:
    """A function from the data module's model inputs to logits, and the model's class names."""
    if isinstance(model, nn.Module):
        hparams = getattr(model, "hparams", None) or {}
        names = hparams.get("class_names") if hasattr(hparams, "get") else None

        def run_module(inputs: Tensor, datamodule: Any) -> Tensor:
            with _eval_mode(model):
                device = next(iter(model.parameters()), torch.empty(0)).device
                out = model(inputs.to(device))
            return (out[0] if isinstance(out, tuple) else out).detach().cpu()

        return run_module, None if names is None else list(names)
    if isinstance(model, str | Path):
        return _file_predictor(Path(model))
    raise ConfigError(
        f"model must be an nn.Module or a model file's path, got {type(model).__name__}"
    )


def _file_predictor(path: Path) -> tuple[Predictor, list[str] | None]:
    loaded = load_model(path)
    card = loaded.card

    def run_file(inputs: Tensor, datamodule: Any) -> Tensor:
        images = inputs
        if card.preprocess is not None:  # the model's own normalisation of [0, 1] images
            images = card.preprocess.normalize(_display(inputs, datamodule))
        with torch.inference_mode():
            return loaded(images).detach().float().cpu()

    return run_file, list(card.class_names) if card.class_names else None


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a prediction; every module's mode restored afterwards."""
    with eval_mode(model), torch.inference_mode():
        yield
