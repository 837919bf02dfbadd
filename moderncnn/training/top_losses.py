"""What a run got wrong: after ``test``, ``top_losses.png`` (the test images with the highest
loss, each with the Grad-CAM map of its predicted class) and ``top_losses.csv``, in the run
folder (:class:`TopLossesReport`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from moderncnn.io.errors import ModernCNNError
from moderncnn.io.pixels import denormalize
from moderncnn.io.safe_text import plain_text_label, spreadsheet_safe
from moderncnn.viz import grad_cam, image_grid
from moderncnn.viz._figure import figures_not_shown
from moderncnn.viz.images import loss_titles

from .callbacks import run_dir

TOP_LOSSES_CSV = "top_losses.csv"


class TopLossesReport(L.Callback):
    """After ``test``: the ``k`` test images with the highest cross-entropy, as a grid with
    the Grad-CAM map of each one's predicted class (``top_losses.png``), and as rows of
    test index, true and predicted class, loss and probabilities (``top_losses.csv``).

    Reads the logits ``ImageClassifier.test_step`` returns; keeps only ``k`` images in memory.
    Under DDP it shows the first process's share of the test set.
    """

    def __init__(self, k: int = 16) -> None:
        self.k = k
        self._kept: list[tuple[float, int, Tensor, int, Tensor]] = []
        self._seen = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kept, self._seen = [], 0

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Tensor) or not isinstance(batch, list | tuple):
            return
        images, labels = batch[0], batch[1]
        logits = outputs.float()
        losses = F.cross_entropy(logits, labels, reduction="none").cpu()
        probs = logits.softmax(1).cpu()
        for row in losses.topk(min(self.k, len(losses))).indices.tolist():
            item = (float(losses[row]), self._seen + row, images[row].cpu(), int(labels[row]))
            self._kept.append((*item, probs[row]))
        self._seen += len(labels)
        self._kept = sorted(self._kept, key=lambda item: -item[0])[: self.k]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_dir(trainer)
        if not trainer.is_global_zero or not self._kept or folder is None:
            return
        losses, indices, images, labels, probs = zip(*self._kept, strict=True)
        inputs, probs_ = torch.stack(images), torch.stack(probs)
        predicted = probs_.argmax(1)
        card = getattr(pl_module, "card", None)
        names = card.names() if card is not None else [str(i) for i in range(probs_.shape[1])]
        network = getattr(pl_module, "model", pl_module)
        device = next(iter(network.parameters()), torch.empty(0)).device
        try:
            maps, _ = grad_cam(network, inputs.to(device), predicted)
        except (ModernCNNError, RuntimeError) as err:  # e.g. a network with no conv to map
            rank_zero_warn(f"top losses drawn without Grad-CAM: {err}")
            maps = None
        preprocess = getattr(card, "preprocess", None)
        display = inputs
        if preprocess is not None and len(preprocess.mean) == inputs.shape[1]:
            display = denormalize(inputs, preprocess.mean, preprocess.std)
        titles, colors = loss_titles(
            names, predicted, torch.tensor(labels), torch.tensor(losses), probs_
        )
        title = (
            f"top {len(losses)} losses of {self._seen} test images, with Grad-CAM of the "
            "prediction\ntrue / predicted, loss, p(true)"
        )
        files = files_of_test_set(trainer)
        if files is not None:  # each image's file under its title: where to find the photo
            shown = [plain_text_label(_short(files[i])) for i in indices]
            titles = [f"{t}\n{name}" for t, name in zip(titles, shown, strict=True)]
        with figures_not_shown():  # a file of the run; plot_top_losses(...) shows it
            image_grid(
                display.clamp(0, 1), titles, colors, title, folder / "top_losses.png", 4, maps
            )
        with (folder / TOP_LOSSES_CSV).open("w", newline="") as file:
            writer = csv.writer(file)
            header = ["test_index", "true", "predicted", "loss", "p_true", "p_predicted"]
            writer.writerow(header + ([] if files is None else ["file"]))
            for loss, index, label, pred, prob in zip(
                losses, indices, labels, predicted.tolist(), probs_, strict=True
            ):
                where = [] if files is None else [spreadsheet_safe(str(files[index]))]
                writer.writerow(
                    [
                        index,
                        spreadsheet_safe(names[label]),
                        spreadsheet_safe(names[pred]),
                        f"{loss:.4f}",
                        f"{float(prob[label]):.4f}",
                        f"{float(prob[pred]):.4f}",
                        *where,
                    ]
                )
        print(f"top losses with Grad-CAM: {folder / 'top_losses.png'}")


def files_of_test_set(trainer: L.Trainer) -> list[Path] | None:
    """The test images' files in test-set order, when the data comes from files (an
    :class:`~moderncnn.data.ImageFolderDataModule`'s ``test_set.samples``), else None."""
    dataset = getattr(getattr(trainer, "datamodule", None), "test_set", None)
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, list | tuple) or not samples:
        return None
    try:
        return [Path(path) for path, _ in samples]
    except (TypeError, ValueError):
        return None


def _short(path: Path) -> str:
    """``class_folder/name.png``: enough to find the file, short enough for a title."""
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return name if len(name) <= 28 else f"...{name[-25:]}"
