"""Callbacks the CLI adds to every run: per-epoch seeding (exact resumption) and the reports
written into the run folder: learning curves after ``fit``; after ``test`` a confusion matrix
(``confusion_matrix.png`` and ``.csv``), the per-class accuracy (also printed) and the most
confused class pairs (``most_confused.csv`` and ``.png``)."""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from moderncnn.io.atomic import atomic_replace, remove_stale_temporaries
from moderncnn.io.errors import ConfigError, OutputError
from moderncnn.io.safe_text import plain_text_label, spreadsheet_safe
from moderncnn.viz import plot_confusion_matrix, plot_curves
from moderncnn.viz._figure import figures_not_shown
from moderncnn.viz.confusion import CONFUSION_CSV, write_confusion_matrix
from moderncnn.viz.interpret import (
    MOST_CONFUSED_CSV,
    most_confused,
    plot_most_confused,
    write_most_confused,
)

from .framework_internals import reopen_fit_dataloader


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


# The checkpoint entry that records the run's seed_everything (None: the run was not seeded).
SEED_KEY = "seed_everything"


def global_seed() -> int | None:
    """The seed Lightning's ``seed_everything`` set in this process (None: none was set)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return None if seed is None else int(seed)


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

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The run's seed_everything, which a resume must keep (preflight.check_resume_settings)
        # and by which `fit --seeds N --ckpt_path last` finds each seed's own run.
        checkpoint[SEED_KEY] = global_seed()

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
            reopen_fit_dataloader(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, flushes it to the disk,
    then renames it over the destination (``os.replace``): a reader, a crash or a kill sees
    the old file or the new one, never a part of one.

    Lightning's own writer stages the file in ``$TMPDIR``; when the run folder is on another
    filesystem, the rename fails and it copies into the open destination instead, which a kill
    leaves half-written. A full disk (or any failed write) removes the temporary file, keeps
    the earlier checkpoint, and raises :class:`~moderncnn.io.errors.OutputError` saying so.

    Every checkpoint Lightning reads through it is read with ``weights_only=True``, also where
    Lightning passes nothing (its learning-rate finder's restore of the weights it saved).
    """

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("weights_only", None)
        if len(args) > 1:  # (map_location, weights_only) given by position
            args = args[:1]
        return super().load_checkpoint(path, *args, weights_only=True, **kwargs)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's fsspec
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: a write error is then an OSError
        try:
            remove_stale_temporaries(path)  # left by a writer killed mid-write
            with atomic_replace(path) as tmp:
                tmp.write_bytes(buffer.getbuffer())
        except OSError as err:
            raise _write_error(path, err, len(buffer.getbuffer())) from err


def _write_error(path: Path, err: OSError, size: int) -> OutputError:
    kept = f"the earlier {path.name} is kept as it was" if path.exists() else "nothing was kept"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free, "
        except OSError:
            free = ""
        return OutputError(
            f"the disk is full: writing the checkpoint {path} ({size / 2**20:.1f} MiB) failed "
            f"({free}{err.strerror}); {kept}. Free some space and resume with --ckpt_path last"
        )
    return OutputError(
        f"cannot write the checkpoint {path}: {err.strerror or err}; {kept}. Check the folder "
        "(checkpoint.dirpath) and resume with --ckpt_path last"
    )


def _non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding nan or inf (first three)."""
    bad = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
            if len(bad) == 3:
                break
    return bad


def divergence_message(trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> str:
    """One line: what became non-finite, at which step and learning rate, and what to try."""
    hparams = getattr(pl_module, "hparams", {})
    peak = hparams.get("lr")
    now = None
    if trainer.optimizers:
        now = trainer.optimizers[0].param_groups[0].get("lr")
    rates = f"learning rate {now:.4g}" if isinstance(now, float | int) else "learning rate ?"
    if isinstance(peak, float | int):
        rates += f", model.lr {peak:g}"
    lower = f" (e.g. {peak / 10:g})" if isinstance(peak, float | int) and peak > 0 else ""
    return (
        f"training diverged: {what} at step {trainer.global_step} (epoch "
        f"{trainer.current_epoch}; {rates}). Stopped; no checkpoint with non-finite weights was "
        f"saved. Try a lower model.lr{lower}, a longer warm-up (model.warmup_epochs) or "
        "gradient clipping (trainer.gradient_clip_val: 1.0)"
    )


class StopOnNonFiniteLoss(L.Callback):
    """Stops training at the first nan or inf training loss, before its backward pass changes
    the weights, with a message naming the step and the learning rate
    (:class:`~moderncnn.io.errors.ConfigError`: the CLI prints it and exits with status 1).

    Under DDP every process stops at the same step (one all-reduce of a flag per step).
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            value = float(loss.detach().float().mean()) if loss.numel() else float("nan")
            shown = "nan" if math.isnan(value) else f"{value:g}"
            what = f"the training loss is {shown}"
            raise ConfigError(divergence_message(trainer, pl_module, what))


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that remembers the best checkpoint of the run it resumes, writes
    atomically, and never saves a diverged model.

    A resumed run writes into a new ``version_N/checkpoints``; Lightning then forgets the
    earlier best score, so the resumed run's first epoch would count as best even if worse,
    and ``test_after_fit`` would test it. The earlier best (while its file exists) is kept as
    the one to beat; it is never deleted, being outside this run's folder.

    Every checkpoint is written by :class:`AtomicCheckpointIO` (installed in ``setup`` when
    the strategy uses Lightning's default writer). Weights or BatchNorm statistics with nan or
    inf are not saved, as best or as last: training stops with a message instead.

    ``last.ckpt`` is the state after every epoch (Lightning >= 2.5 writes it only when a best
    checkpoint was written in the same step, so an epoch that did not improve left an older
    ``last.ckpt``, and ``--ckpt_path last`` would repeat epochs).
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        epoch_based = self._every_n_train_steps == 0 and self._train_time_interval is None
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if not (self.save_last is True and epoch_based and due):
            return
        if self._should_skip_saving_checkpoint(trainer) or self._defer_save_until_validation:
            return  # not fitting, sanity check, or saved (top-k and last) at this very step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = _non_finite_tensors(trainer.lightning_module)
        if bad:
            what = f"the weights hold nan or inf ({', '.join(bad)})"
            raise ConfigError(divergence_message(trainer, trainer.lightning_module, what))
        super()._save_checkpoint(trainer, filepath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        best, score = state_dict.get("best_model_path"), state_dict.get("best_model_score")
        if self.best_model_score is None and score is not None and best and Path(best).is_file():
            self.best_model_score = self.kth_value = torch.as_tensor(score)
            self.best_k_models = {best: self.best_model_score}
            self.best_model_path = self.kth_best_model_path = best


class LearningRateLog(L.Callback):
    """The learning rate of each optimiser's parameter groups (``lr-SGD``, ``lr-SGD/pg2``, ...:
    Lightning's ``LearningRateMonitor`` names, in ``metrics.csv``), drawn in the curves'
    learning-rate panel; idle in a run without loggers.

    Logged at every ``every``-th optimiser step, ``every`` chosen for about ``points`` points a
    run (every step of a short one): Lightning's monitor logs every ``log_every_n_steps`` (50),
    so a short run's panel was empty and an 8-epoch run showed 3 points (issue 24).
    """

    def __init__(self, points: int = 200) -> None:
        self.points = points
        self.every = 1
        self._logged_at: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self.every = max(1, int(total) // self.points) if math.isfinite(total) else 1
        self._logged_at = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        # (With gradient accumulation several batches start at one optimiser step.)
        if not trainer.loggers or step % self.every or step == self._logged_at:
            return
        self._logged_at = step
        rates = learning_rates(trainer.optimizers)
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=step)


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """{``lr-<Optimizer>[-<i>][/pg<j>]``: rate}, one per optimiser parameter group."""
    rates = {}
    for i, optimizer in enumerate(optimizers):
        name = f"lr-{type(optimizer).__name__}" + (f"-{i}" if len(optimizers) > 1 else "")
        groups = optimizer.param_groups
        for j, group in enumerate(groups, start=1):
            rates[name if len(groups) == 1 else f"{name}/pg{j}"] = float(group["lr"])
    return rates


class FitClock(L.Callback):
    """Logs ``fit_seconds``, the wall time since ``fit`` started, with each validation: with
    it, ``metrics.csv`` tells the time to an accuracy (the first row whose ``val_acc`` reaches
    it). Add it where that is measured (``benchmarks/gpu_time_to_accuracy.py``)::

        trainer:
          callbacks+:
            - moderncnn.training.callbacks.FitClock
    """

    def __init__(self) -> None:
        self.start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the epoch's kernels have finished
        pl_module.log("fit_seconds", time.perf_counter() - self.start, on_epoch=True)


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
        path = metrics_csv.parent / self.filename
        with figures_not_shown():  # a file of the run; plot_curves(run) shows it
            plot_curves(runs, save=path)
        print(f"learning curves: {path}")


class ConfusionMatrixReport(L.Callback):
    """After ``test``: ``confusion_matrix.png``, ``confusion_matrix.csv`` (the counts, for
    :func:`~moderncnn.viz.plot_confusion_matrix`) and ``per_class_accuracy.csv`` in the run
    folder, and the per-class accuracies printed.

    Reads the confusion matrix that :class:`~moderncnn.training.module.ImageClassifier`
    accumulates over the test set (``test_confusion``).
    """

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = getattr(pl_module, "test_confusion", None)
        if metric is None or not metric.update_called:
            return
        confusion = metric.compute().cpu()  # synced over processes: call it on every rank
        if trainer.is_global_zero:
            with figures_not_shown():  # files of the run; plot_confusion_matrix(run) shows it
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
                writer.writerows(
                    (spreadsheet_safe(name), n, c, f"{acc:.4f}") for name, n, c, acc in rows
                )
            safe_names = [spreadsheet_safe(name) for name in names]
            write_confusion_matrix(folder / CONFUSION_CSV, confusion, safe_names)
            title = f"test accuracy {accuracy:.2%}"
            labels = [plain_text_label(name) for name in names]
            plot_confusion_matrix(confusion, labels, folder / "confusion_matrix.png", title)
            pairs = most_confused(confusion, names, n=10)
            write_most_confused(
                folder / MOST_CONFUSED_CSV,
                [(spreadsheet_safe(t), spreadsheet_safe(p), c) for t, p, c in pairs],
            )
            plot_most_confused(confusion, names, n=10, save=folder / "most_confused.png")
            print(f"confusion matrix, per-class accuracy and most confused pairs: {folder}")


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule, n: int) -> list[str]:
    """The model's saved class names, else the data module's, else the class indices."""
    for names in (
        getattr(pl_module, "hparams", {}).get("class_names"),
        getattr(trainer.datamodule, "class_names", None),
    ):
        if names is not None and len(names) == n:
            return [str(name) for name in names]
    return [str(i) for i in range(n)]
