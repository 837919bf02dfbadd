"""Checks the CLI runs before a run writes or loads anything, so a bad setting fails in seconds
with a message naming it, instead of hours later, and never after an earlier run's files have
been touched.

- the output folder exists or can be made, is writable and has room for the checkpoints;
- the trainer's limits describe at least one epoch or step;
- a checkpoint to resume from (``--ckpt_path``) is readable with ``weights_only=True`` and
  fits the model this config builds (architecture, class count, input channels).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as L
from torch import nn

from moderncnn.io.checkpoint import CheckpointError, read_checkpoint

__all__ = [
    "OutputFolderError",
    "check_fit_limits",
    "check_output_folder",
    "check_resume_checkpoint",
    "min_free_bytes",
    "run_folders",
]

# Room left for TensorBoard events, metrics.csv, plots and the config, on top of checkpoints.
LOG_MARGIN_BYTES = 16 * 2**20


class OutputFolderError(OSError):
    """A run folder that cannot be written: read-only, not a folder, or a disk too full."""


def min_free_bytes(model: nn.Module) -> int:
    """Free space a run needs: two checkpoints (best and last) plus logs.

    A checkpoint holds the weights and up to two optimiser tensors per weight (SGD momentum;
    Adam's first and second moments), hence 3x the parameter and buffer bytes.
    """
    tensors = [*model.parameters(), *model.buffers()]
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return 2 * 3 * weight_bytes + LOG_MARGIN_BYTES


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the folder that a mkdir would write in)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | Path, needed_bytes: int = LOG_MARGIN_BYTES) -> None:
    """Raises :class:`OutputFolderError` unless ``path`` can be made and written with room to spare.

    Nothing is left behind: the probe file is deleted, and missing folders are not created.
    """
    path = Path(path)
    where = _existing_ancestor(path)
    hint = "run from a writable folder, or set the loggers' save_dir (trainer.logger) to one"
    if not where.is_dir():
        raise OutputFolderError(f"cannot write the run folder {path}: {where} is a file; {hint}")
    try:
        # A real write, not os.access: it also catches read-only mounts and ACLs.
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputFolderError(
            f"cannot write the run folder {path}: {where} is not writable ({reason}); {hint}"
        ) from err
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        raise OutputFolderError(
            f"not enough free disk space for the run folder {path}: {free / 2**20:.1f} MiB free "
            f"in {where}, {needed_bytes / 2**20:.1f} MiB needed (two checkpoints and the logs); "
            f"free some space or {hint}"
        )


def run_folders(trainer: L.Trainer) -> list[Path]:
    """The folders a run will write into: each logger's, else ``default_root_dir``."""
    folders = [Path(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)]
    return folders or [Path(trainer.default_root_dir)]


def check_fit_limits(trainer: L.Trainer, module: L.LightningModule) -> None:
    """A fit must train at least one step, and a schedule planned over the run needs an end."""
    for key in ("max_epochs", "max_steps"):
        value = getattr(trainer.fit_loop, key)
        if value == 0:
            raise ValueError(
                f"trainer.{key} must be >= 1 (or -1 for no limit), got 0: the run would train "
                "nothing"
            )
    scheduler = getattr(module, "hparams", {}).get("scheduler")
    endless = trainer.fit_loop.max_epochs == -1 and trainer.fit_loop.max_steps == -1
    if endless and scheduler in ("onecycle", "cosine"):
        raise ValueError(
            f"the {scheduler!r} schedule needs a run of known length, but trainer.max_epochs "
            "and trainer.max_steps are both -1 (no limit); set one, or use scheduler 'step' "
            "or 'none'"
        )


def check_resume_checkpoint(path: str | Path, module: L.LightningModule) -> None:
    """Refuses a checkpoint that is unreadable, unsafe, or made for another network.

    Read with ``weights_only=True`` (no pickled code runs); its ``state_dict`` must have the
    same keys and tensor shapes as ``module``'s, else the message names what differs.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--ckpt_path {str(path)!r} does not exist; give a .ckpt file")
    checkpoint = read_checkpoint(path)  # CheckpointError (truncated, unsafe), naming the file
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); --ckpt_path takes a .ckpt "
            "from `moderncnn fit`"
        )
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own.keys() & state.keys()
        if getattr(state[key], "shape", None) != own[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    saved = checkpoint.get("hyper_parameters") or {}
    differs = [
        f"{key}={saved[key]!r} (this config: {getattr(module.hparams, key, None)!r})"
        for key in ("model", "num_classes", "in_chans", "model_kwargs")
        if key in saved and saved[key] != getattr(module.hparams, key, None)
    ]
    details = differs or [
        *(f"missing {k}" for k in missing[:3]),
        *(f"unexpected {k}" for k in unexpected[:3]),
        *mismatched[:3],
    ]
    raise CheckpointError(
        f"{path} does not fit this config's model: {'; '.join(details)}. Resume with the config "
        "the checkpoint was trained with, or start a new run without --ckpt_path"
    )
