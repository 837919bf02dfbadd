"""The private Lightning and torch names moderncnn still needs, reached from here only.

Each is something no public API offers (yet); each has a contract test in
``tests/training/test_framework_internals.py`` that fails when the framework renames or removes
it, so an upgrade breaks one test naming the name, not ``last.ckpt``, resume or run folders.
``pyproject.toml`` caps Lightning and torch at the next minor release for the same reason.

:class:`~moderncnn.training.callbacks.ResumableModelCheckpoint` extends ``ModelCheckpoint``
and so calls and overrides some of its private members through ``self``; they are listed in
:data:`MODEL_CHECKPOINT_INTERNALS`, under the same contract.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

__all__ = [
    "MODEL_CHECKPOINT_INTERNALS",
    "ConfigNamesTheModelCLI",
    "PrecisionInput",
    "checkpoint_saved_by_this_process",
    "logger_version_given",
    "reopen_fit_dataloader",
    "set_logger_version",
    "set_scheduler_last_lr",
    "spawns_its_processes",
]

# The values `Trainer(precision=...)` takes, as its signature types them (jsonargparse
# validates `trainer.precision` against this).
PrecisionInput = _PRECISION_INPUT

# ModelCheckpoint members ResumableModelCheckpoint calls (methods) or reads (attributes).
MODEL_CHECKPOINT_INTERNALS = (
    "_save_checkpoint",  # overridden: refuses to save a model with nan/inf weights
    "_save_last_checkpoint",
    "_should_save_on_train_epoch_end",
    "_should_skip_saving_checkpoint",
    "_monitor_candidates",
    "_every_n_train_steps",
    "_every_n_epochs",
    "_train_time_interval",
    "_defer_save_until_validation",
)


def logger_version_given(logger: Any) -> bool:
    """Whether ``logger`` was given its version (or has chosen one), rather than to choose it.

    Lightning's loggers pick the next free ``version_N`` lazily on first use; ``_version`` is
    None until then. A logger without the attribute counts as given (we leave it alone).
    """
    return getattr(logger, "_version", "given") is not None


def set_logger_version(logger: Any, version: int) -> None:
    """Makes ``logger`` write into ``version_{version}`` (no public setter exists)."""
    logger._version = version


def checkpoint_saved_by_this_process(callback: ModelCheckpoint) -> str:
    """The path of the last checkpoint ``callback`` wrote in this process, or ``""``.

    Unlike ``last_model_path`` (restored from a resumed checkpoint's state), this is only set
    by a save, so it tells whether this run wrote anything.
    """
    return getattr(callback, "_last_checkpoint_saved", "") or ""


def reopen_fit_dataloader(trainer: L.Trainer) -> None:
    """Opens the training DataLoader's iterator again (drawing its shuffle order anew), as
    every epoch after the first does; the first epoch's was opened during setup."""
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is not None:
        iter(fetcher)


def spawns_its_processes(trainer: L.Trainer) -> bool:
    """Whether the trainer's strategy starts its processes from this one (``ddp_spawn``,
    ``ddp_fork``...) rather than re-running the script in each (``ddp``)."""
    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def set_scheduler_last_lr(scheduler: Any, lrs: list[float]) -> None:
    """Sets what ``scheduler.get_last_lr()`` answers, after param groups were added to its
    optimizer (torch's schedulers keep it in ``_last_lr`` and have no setter)."""
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = list(lrs)


class ConfigNamesTheModelCLI(LightningCLI):
    """``LightningCLI`` whose ``--ckpt_path`` does not rewrite the config's ``model:``.

    ``LightningCLI.__init__`` calls its private ``_parse_ckpt_path``, which replaces the
    config's model with the checkpoint's hyperparameters; this class calls
    :meth:`check_ckpt_path` there instead, which subclasses define.
    """

    def _parse_ckpt_path(self) -> None:
        self.check_ckpt_path()

    def check_ckpt_path(self) -> None:
        """Checks ``--ckpt_path`` after parsing, before the classes are instantiated."""
