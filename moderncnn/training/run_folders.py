"""A run's folder, ``lightning_logs/version_N/``, and what every run writes into it.

:func:`prepare_run_folder` checks everything that would fail later or lose an earlier run's
files before the run starts, then :func:`claim_run_folder` makes the next free ``version_N``
with an exclusive ``mkdir`` (two runs started at once get two folders), and
:func:`discard_unfinished_run_folder` removes it again when the run failed before its first
checkpoint. ``moderncnn fit`` (:mod:`.cli`) and the notebook :class:`~.trainer.Trainer` both
run through here, with the same loggers, checkpoints and callbacks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from .callbacks import (
    ConfusionMatrixReport,
    LearningCurvesPlot,
    LearningRateLog,
    SeedEachEpoch,
    StopOnNonFiniteLoss,
)
from .divergence import DivergenceWarning
from .framework_internals import (
    checkpoint_saved_by_this_process,
    logger_version_given,
    set_logger_version,
)
from .preflight import (
    LOG_MARGIN_BYTES,
    UNKNOWN,
    OutputFolderError,
    check_devices,
    check_fit_limits,
    check_output_folder,
    check_resume_checkpoint,
    checkpoint_folders,
    min_free_bytes,
    run_folders,
)
from .run_facts import RunFacts
from .run_report import RunReport
from .top_losses import TopLossesReport

__all__ = [
    "CHECKPOINT_DEFAULTS",
    "DEFAULT_LOGGERS",
    "LOG_ROOT",
    "TRAINER_DEFAULTS",
    "claim_run_folder",
    "default_callbacks",
    "discard_unfinished_run_folder",
    "fix_logger_versions",
    "prepare_run_folder",
]

LOG_ROOT = "lightning_logs"
# --ckpt_path values that Lightning resolves itself ("last"/"best" are resolved here first).
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")

# Both loggers write into the same lightning_logs/version_N/ (see instantiate_trainer).
DEFAULT_LOGGERS = [
    {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": LOG_ROOT},
    },
    {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": ".", "name": LOG_ROOT},
    },
]

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": DEFAULT_LOGGERS,
    # Same seed, same result on CPU; "warn" rather than True because a few CUDA kernels
    # (adaptive average pooling's backward) have no deterministic version and would raise.
    # Lightning then also turns cuDNN autotuning off (benchmark=False): GPU recipes set
    # `deterministic: false` and `benchmark: true` for speed (configs/resnet18_cifar10_fast.yaml).
    "deterministic": "warn",
}

# The best (by validation accuracy) and the last checkpoint of every run.
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "monitor": "val_acc",
    "mode": "max",
    "save_last": True,
    "filename": "best-epoch={epoch}-val_acc={val_acc:.4f}",
    "auto_insert_metric_name": False,
}


def default_callbacks() -> list[Callback]:
    """The callbacks of every run (besides the checkpoints): seeding, learning-rate log, reports."""
    return [
        SeedEachEpoch(),
        LearningRateLog(),
        StopOnNonFiniteLoss(),
        DivergenceWarning(),
        RunFacts(),
        LearningCurvesPlot(),
        ConfusionMatrixReport(),
        TopLossesReport(),
        RunReport(),
    ]


def prepare_run_folder(
    trainer: Trainer, model: Any, fitting: bool, ckpt_path: str | None, seed: Any = UNKNOWN
) -> None:
    """Fails now, naming the setting, on what would fail later or lose an earlier run's files:
    an unwritable or full output folder, a fit of zero epochs, a checkpoint that is unsafe
    or made for another model, a resume with another ``seed`` (seed_everything). Then opens
    the CSV log, so it starts in an empty folder (the CSV logger deletes the metrics.csv of a
    folder that already has files)."""
    if fitting:
        check_fit_limits(trainer, model)
    check_devices(trainer)
    needed = min_free_bytes(model) if fitting else LOG_MARGIN_BYTES
    for folder in run_folders(trainer):
        check_output_folder(folder, needed)
    for folder in checkpoint_folders(trainer):
        check_output_folder(folder, needed, what="checkpoint.dirpath")
    if ckpt_path and "://" not in ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
        # A resumed fit must also keep the checkpoint's settings (lr, optimizer, ...).
        check_resume_checkpoint(ckpt_path, model, resume=fitting, seed=seed)
    claim_run_folder(trainer)
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            _ = logger.experiment


def fix_logger_versions(trainer: Trainer) -> None:
    """Fixes every logger's version now: asked one after another, after the first one wrote its
    folder, TensorBoard and CSV would pick two different version_N folders. A version chosen
    here (not given in the config) is marked, so :func:`claim_run_folder` may move it on."""
    for logger in trainer.loggers:
        if not logger_version_given(logger):
            logger._moderncnn_auto_version = True
        _ = logger.version


# Attribute of the Trainer: (the run folder this process made, every folder it made for it).
_CLAIMED = "_moderncnn_run_folder"


def claim_run_folder(trainer: Trainer) -> Path | None:
    """Makes this run's ``version_N`` folder with an exclusive ``mkdir``, the next free N.

    Two runs started at once in one folder both see ``version_0`` free; the one whose mkdir
    fails moves on to ``version_1``, so they never share a folder. Only loggers whose version
    was chosen automatically move; rank 0 alone makes the folder. Done once per Trainer.
    """
    if getattr(trainer, _CLAIMED, None) is not None or not trainer.is_global_zero:
        return None
    loggers = [lg for lg in trainer.loggers if getattr(lg, "_moderncnn_auto_version", False)]
    root_of = {id(lg): getattr(lg, "root_dir", None) for lg in loggers}
    local = [lg for lg in loggers if isinstance(root_of[id(lg)], str)]
    loggers = [lg for lg in local if "://" not in root_of[id(lg)]]
    if not loggers:
        return None
    root = Path(root_of[id(loggers[0])])
    made = []
    for folder in reversed([root, *root.parents]):
        if not folder.exists():
            folder.mkdir(exist_ok=True)
            made.append(folder)
    version = loggers[0].version if isinstance(loggers[0].version, int) else 0
    for _ in range(10_000):
        folder = root / f"version_{version}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            version += 1
    else:  # pragma: no cover - ten thousand runs started in one instant
        raise OutputFolderError(f"cannot make a new version_N folder in {root}")
    for logger in loggers:
        if root_of[id(logger)] == root_of[id(loggers[0])]:
            set_logger_version(logger, version)
    setattr(trainer, _CLAIMED, (folder, [*made, folder]))
    return folder


def discard_unfinished_run_folder(trainer: Trainer | None) -> None:
    """Removes the run folder :func:`claim_run_folder` made, and the folders made for it, when
    the run failed before writing any checkpoint: a refused run leaves no ``version_N``."""
    claimed = getattr(trainer, _CLAIMED, None) if trainer is not None else None
    if claimed is None:
        return
    folder, made = claimed
    saved = [
        checkpoint_saved_by_this_process(cb)
        for cb in trainer.callbacks
        if isinstance(cb, ModelCheckpoint)
    ]
    if any(path and Path(path).exists() for path in saved) or any(folder.rglob("*.ckpt")):
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in reversed(made[:-1]):
        try:
            parent.rmdir()  # only while empty
        except OSError:
            break
    setattr(trainer, _CLAIMED, None)
