"""Callbacks the CLI adds to every run: per-epoch seeding (exact resumption) and the reports
written into the run folder: learning curves after ``fit``; after ``test`` a confusion matrix
and the per-class accuracy (also printed)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from .plots import plot_curves, save_confusion_matrix


def run_dir(trainer: L.Trainer) -> Path | None:
    """The run folder (the first logger's), or None without loggers.

    Not ``trainer.log_dir``: under DDP that is a collective call (a broadcast from rank 0),
    which the rank-0-only code that writes files would wait on forever.
    """
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    folder = getattr(logger, "log_dir", None) or logger.save_dir
    return None if folder is None else Path(folder)


class SeedEachEpoch(L.Callback):
    """Re-seeds the random generators at the start of every training epoch from (seed, epoch).

    Shuffling, augmentation and dropout then depend only on the seed and the epoch, so a run
    resumed from ``last.ckpt`` repeats the epochs of an uninterrupted run exactly; without it
    they would depend on how much randomness the process drew before.

    Args:
        seed: base seed; None: the one ``seed_everything`` set (``PL_GLOBAL_SEED``), or no
            re-seeding if there is none.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = trainer.current_epoch  # > 0 when resumed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = self.seed if self.seed is not None else os.environ.get("PL_GLOBAL_SEED")
        if seed is None:
            return
        # Distinct per process too, as seed_everything's workers=True does for DataLoaders.
        epoch_seed = (int(seed) + 1_000_003 * trainer.current_epoch + trainer.global_rank) % 2**32
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        if trainer.current_epoch == self._first_epoch:
            # Lightning opened the first epoch's DataLoader iterator (which draws the shuffle
            # seed) before this hook, during setup; open it again from the new seed, as every
            # later epoch's is.
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None:
                iter(fetcher)


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that remembers the best checkpoint of the run it resumes.

    A resumed run writes into a new ``version_N/checkpoints``; Lightning then forgets the
    earlier best score, so the resumed run's first epoch would count as best even if worse,
    and ``test_after_fit`` would test it. The earlier best (while its file exists) is kept as
    the one to beat; it is never deleted, being outside this run's folder.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        best, score = state_dict.get("best_model_path"), state_dict.get("best_model_score")
        if self.best_model_score is None and score is not None and best and Path(best).is_file():
            self.best_model_score = self.kth_value = torch.as_tensor(score)
            self.best_k_models = {best: self.best_model_score}
            self.best_model_path = self.kth_best_model_path = best


class LearningCurvesPlot(L.Callback):
    """After ``fit``: ``curves.png`` (loss and accuracy per epoch) beside ``metrics.csv``."""

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            return
        csv_logger.save()  # flush the rows not yet written
        metrics_csv = Path(csv_logger.log_dir) / "metrics.csv"
        if not metrics_csv.is_file():
            return
        runs = [metrics_csv]
        if trainer.ckpt_path:  # resumed: the earlier epochs are in the checkpoint's run folder
            earlier = Path(trainer.ckpt_path).parent.parent / "metrics.csv"
            if earlier.is_file() and earlier.resolve() != metrics_csv.resolve():
                runs.insert(0, earlier)
        path = plot_curves(runs, metrics_csv.parent / self.filename)
        print(f"learning curves: {path}")


class ConfusionMatrixReport(L.Callback):
    """After ``test``: ``confusion_matrix.png`` and ``per_class_accuracy.csv`` in the run folder,
    and the per-class accuracies printed.

    Reads the confusion matrix that :class:`~moderncnn.training.module.ImageClassifier`
    accumulates over the test set (``test_confusion``).
    """

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = getattr(pl_module, "test_confusion", None)
        if metric is None or not metric.update_called:
            return
        confusion = metric.compute().cpu()  # synced over processes: call it on every rank
        if trainer.is_global_zero:
            self._report(trainer, pl_module, confusion)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, confusion: Tensor) -> None:
        names = _class_names(trainer, pl_module, len(confusion))
        totals = confusion.sum(1)
        correct = confusion.diag()
        accuracy = correct.sum().item() / max(totals.sum().item(), 1)
        rows = [
            (name, int(n), int(c), c.item() / n.item() if n else float("nan"))
            for name, n, c in zip(names, totals, correct, strict=True)
        ]
        width = max(len(name) for name in names)
        print(f"\n{'class':<{width}}  {'images':>6}  accuracy")
        for name, n, _, acc in rows:
            print(f"{name:<{width}}  {n:>6}  {acc:8.2%}")
        print(f"{'all':<{width}}  {int(totals.sum()):>6}  {accuracy:8.2%}")
        folder = run_dir(trainer)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "per_class_accuracy.csv").open("w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["class", "images", "correct", "accuracy"])
                writer.writerows((name, n, c, f"{acc:.4f}") for name, n, c, acc in rows)
            title = f"test accuracy {accuracy:.2%}"
            path = save_confusion_matrix(confusion, names, folder / "confusion_matrix.png", title)
            print(f"confusion matrix and per-class accuracy: {path.parent}")


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule, n: int) -> list[str]:
    """The model's saved class names, else the data module's, else the class indices."""
    for names in (
        getattr(pl_module, "hparams", {}).get("class_names"),
        getattr(trainer.datamodule, "class_names", None),
    ):
        if names is not None and len(names) == n:
            return [str(name) for name in names]
    return [str(i) for i in range(n)]
