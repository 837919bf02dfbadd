"""Checks the CLI runs before a run writes or loads anything, so a bad setting fails in seconds
with a message naming it, instead of hours later, and never after an earlier run's files have
been touched.

- the output folder exists or can be made, is writable and has room for the checkpoints;
- the trainer's limits describe at least one epoch or step;
- a checkpoint to resume from (``--ckpt_path``) is readable with ``weights_only=True`` and
  fits the model this config builds (architecture, class count, input channels), and a
  resumed ``fit`` trains with the checkpoint's own settings (learning rate, optimizer, ...);
- the trainer asks for no more CPU processes than there are cores, and accumulates >= 1 batch;
- the model's sizes (``model_kwargs``) are ones that build in seconds, not hours;
- channels-last training on a CPU is safe with the torch in use (a subprocess tries it once).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.checkpoint import CheckpointError, read_checkpoint
from moderncnn.io.errors import ConfigError, OutputError
from moderncnn.models.factory import check_model_kwargs

from .callbacks import SEED_KEY

__all__ = [
    "OutputFolderError",
    "channels_last_is_safe",
    "check_devices",
    "check_fit_limits",
    "check_model_kwargs",
    "check_output_folder",
    "check_resume_checkpoint",
    "min_free_bytes",
    "recorded_seed",
    "run_folders",
]


# "No value to compare": a seed that neither the checkpoint nor its run folder records.
class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

# Room left for TensorBoard events, metrics.csv, plots and the config, on top of checkpoints.
LOG_MARGIN_BYTES = 16 * 2**20


class OutputFolderError(OutputError):
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


def check_output_folder(
    path: str | Path, needed_bytes: int = LOG_MARGIN_BYTES, what: str = "the run folder"
) -> None:
    """Raises :class:`OutputFolderError` unless ``path`` can be made and written with room to spare.

    Nothing is left behind: the probe file is deleted, and missing folders are not created.
    ``what`` names the folder in the message (``"checkpoint.dirpath"``).
    """
    path = Path(path)
    where = _existing_ancestor(path)
    hint = "run from a writable folder, or set the loggers' save_dir (trainer.logger) to one"
    if what != "the run folder":
        hint = f"set {what} to a writable folder"
    if not where.is_dir():
        raise OutputFolderError(f"cannot write {what} {path}: {where} is a file; {hint}")
    try:
        # A real write, not os.access: it also catches read-only mounts and ACLs.
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputFolderError(
            f"cannot write {what} {path}: {where} is not writable ({reason}); {hint}"
        ) from err
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        raise OutputFolderError(
            f"not enough free disk space for {what} {path}: {free / 2**20:.1f} MiB free "
            f"in {where}, {needed_bytes / 2**20:.1f} MiB needed (two checkpoints and the logs); "
            f"free some space or {hint}"
        )


def run_folders(trainer: L.Trainer) -> list[Path]:
    """The folders a run will write into: each logger's, else ``default_root_dir``."""
    folders = [Path(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)]
    return folders or [Path(trainer.default_root_dir)]


def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """The ``dirpath`` of each checkpoint callback that sets one (``checkpoint.dirpath``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [
        Path(cb.dirpath)
        for cb in trainer.callbacks
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and "://" not in str(cb.dirpath)
    ]


def check_devices(trainer: L.Trainer) -> None:
    """No more training processes on a CPU than it has cores (``devices: 1000`` would start
    999 more processes, each loading the data)."""
    from lightning.pytorch.accelerators import CPUAccelerator

    cores = os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ConfigError(
            f"trainer.devices={trainer.num_devices} would start {trainer.num_devices} training "
            f"processes on the CPU, which has {cores} cores; use trainer.devices <= {cores} "
            "(1 trains in one process, using every core)"
        )


def check_fit_limits(trainer: L.Trainer, module: L.LightningModule) -> None:
    """A fit must train at least one step, and a schedule planned over the run needs an end."""
    accumulate = trainer.accumulate_grad_batches
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches must be an integer >= 1 (batches per optimizer "
            f"step), got {accumulate!r}"
        )
    for key in ("max_epochs", "max_steps"):
        value = getattr(trainer.fit_loop, key)
        if value == 0:
            raise ConfigError(
                f"trainer.{key} must be >= 1 (or -1 for no limit), got 0: the run would train "
                "nothing"
            )
    scheduler = getattr(module, "hparams", {}).get("scheduler")
    endless = trainer.fit_loop.max_epochs == -1 and trainer.fit_loop.max_steps == -1
    if endless and scheduler in ("onecycle", "cosine"):
        raise ConfigError(
            f"the {scheduler!r} schedule needs a run of known length, but trainer.max_epochs "
            "and trainer.max_steps are both -1 (no limit); set one, or use scheduler 'step' "
            "or 'none'"
        )


def check_resume_checkpoint(
    path: str | Path, module: L.LightningModule, resume: bool = False, seed: Any = UNKNOWN
) -> None:
    """Refuses a checkpoint that is unreadable, unsafe, or made for another network.

    Read with ``weights_only=True`` (no pickled code runs); its ``state_dict`` must have the
    same keys and tensor shapes as ``module``'s, else the message names what differs. With
    ``resume`` (``fit --ckpt_path``), the model's settings and the ``seed`` (this run's
    ``seed_everything``) must also be the checkpoint's (:func:`check_resume_settings`).
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
        if resume:
            check_resume_settings(path, checkpoint, module, seed)
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


# Settings a resumed run may change: speed switches, and what the data module gives the model.
# Settings of speed or of evaluation only: a resumed run may change them.
RESUMABLE_CHANGES = frozenset({"compile", "channels_last", "class_names", "preprocess", "tta"})


def _comparable(key: str, value: Any) -> Any:
    """``value`` with tuples as lists; ``model_kwargs`` without ``weights`` (the starting
    weights, which the checkpoint's replace anyway)."""
    if isinstance(value, Mapping):
        items = {k: _comparable(k, v) for k, v in value.items()}
        return {k: v for k, v in items.items() if not (key == "model_kwargs" and k == "weights")}
    if isinstance(value, list | tuple):
        return [_comparable("", v) for v in value]
    return value


def recorded_seed(checkpoint: Any, path: str | Path) -> Any:
    """The ``seed_everything`` of the run that wrote ``checkpoint`` (an int, or None for an
    unseeded run): its own record (``SeedEachEpoch``), else, for a checkpoint written before
    runs recorded it, the run folder's ``config.yaml``; :data:`UNKNOWN` when neither says."""
    if isinstance(checkpoint, Mapping) and SEED_KEY in checkpoint:
        seed = checkpoint[SEED_KEY]
        return seed if seed is None or _is_int(seed) else UNKNOWN
    config = Path(path).parent.parent / "config.yaml"  # version_N/checkpoints/last.ckpt
    if Path(path).parent.name != "checkpoints" or not config.is_file():
        return UNKNOWN
    try:
        seed = yaml.safe_load(config.read_text(encoding="utf-8")).get(SEED_KEY, UNKNOWN)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return UNKNOWN
    return seed if seed is False or _is_int(seed) else UNKNOWN


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resume_settings(
    path: str | Path, checkpoint: Any, module: L.LightningModule, seed: Any = UNKNOWN
) -> None:
    """Refuses to resume with settings other than the checkpoint's ``hyper_parameters``, or
    with another ``seed`` (``seed_everything``; :data:`UNKNOWN`: not checked).

    A resumed run restores the checkpoint's optimizer state and schedule: a new ``lr`` would be
    recorded in the new ``config.yaml`` yet not used, and another optimizer or scheduler has
    state of another shape; a new seed would make its epochs those of neither run. Raises
    :class:`ConfigError` listing every key that differs.
    """
    saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    own = getattr(module, "hparams", None)
    if not isinstance(saved, Mapping) or own is None:
        return
    differs = [
        f"model.{key}: {saved[key]!r} in the checkpoint, {own[key]!r} now"
        for key in own
        if key in saved
        and key not in RESUMABLE_CHANGES
        and _comparable(key, saved[key]) != _comparable(key, own[key])
    ]
    was = recorded_seed(checkpoint, path)
    was = None if was is False else was  # `seed_everything: false` in a config.yaml: unseeded
    now = None if seed is False else seed
    if seed is not UNKNOWN and was is not UNKNOWN and was != now:
        differs.append(f"{SEED_KEY}: {was!r} in the checkpoint, {now!r} now")
    if differs:
        raise ConfigError(
            f"--ckpt_path {path}: this config differs from the run it would resume in "
            f"{'; '.join(differs)}. A resumed run continues the checkpoint's optimizer and "
            "schedule, so the change would not apply: resume with the checkpoint's settings, or "
            "start a new run without --ckpt_path (model.model_kwargs.weights set to the "
            "checkpoint starts it from those weights)"
        )


# -- channels-last on a CPU -------------------------------------------------------------------

# Some torch builds crash (SIGSEGV, a malloc assertion) in the CPU backward of a strided 1x1
# convolution in channels-last for odd batch sizes (torch 2.14.1 on an AMD EPYC). A crash
# cannot be caught, so a subprocess runs the kernels first, at odd and even batch sizes, and
# compares their gradients with the default memory format's.
_PROBE = """
import torch
torch.manual_seed(0)
for cin, cout, k, stride in ((8, 16, 1, 2), (16, 32, 1, 2), (4, 8, 3, 1), (8, 16, 3, 2)):
    conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    fast = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    fast.load_state_dict(conv.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    for n in (1, 2, 3, 5, 8):
        for size in (7, 14):
            x = torch.randn(n, cin, size, size)
            x_cl = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
            x.requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                plain = conv(x).float().square().sum()
                channels_last = fast(x_cl).float().square().sum()
            plain.backward()
            channels_last.backward()
            assert torch.allclose(x.grad, x_cl.grad, rtol=RTOL, atol=ATOL), (cin, k, n, size)
    assert torch.allclose(conv.weight.grad, fast.weight.grad, rtol=RTOL, atol=10 * ATOL)
print("channels-last ok")
"""
CHANNELS_LAST_PROBE = "BF16, RTOL, ATOL = False, 1e-3, 1e-4" + _PROBE
# The same under bf16 autocast (bf16-mixed training), which runs other convolution kernels:
# torch 2.14.1 on the 2-core machines here crashes in the fp32 probe at 2 threads, not in this.
CHANNELS_LAST_PROBE_BF16 = "BF16, RTOL, ATOL = True, 5e-2, 5e-2" + _PROBE
_PROBE_TIMEOUT_S = 300
_channels_last_verdicts: dict[str, bool] = {}


def _cache_dir() -> Path:
    root = os.environ.get("MODERNCNN_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "moderncnn" if root else Path.home() / ".cache" / "moderncnn"


def _probe_key(probe_code: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:  # the model name: the same torch may crash on one CPU and not another
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            cpu = next((ln.split(":", 1)[1].strip() for ln in file if "model name" in ln), cpu)
    except OSError:
        pass
    probe = hashlib.sha256(probe_code.encode()).hexdigest()[:12]
    return f"torch {torch.__version__} | {cpu} | {torch.get_num_threads()} threads | {probe}"


def channels_last_is_safe(bf16: bool = False) -> bool:
    """Whether channels-last training runs correctly on this CPU with this torch.

    Decided by :data:`CHANNELS_LAST_PROBE` (``bf16``: :data:`CHANNELS_LAST_PROBE_BF16`, for
    bf16-mixed training) in a subprocess (a crash there cannot take the run down), once per
    torch version, CPU, thread count and probe: the verdict is kept in
    ``~/.cache/moderncnn/channels_last.json`` (``$MODERNCNN_CACHE_DIR`` to move it). When it
    fails, a warning says so and training uses the default memory format (same numbers).
    """
    code = CHANNELS_LAST_PROBE_BF16 if bf16 else CHANNELS_LAST_PROBE
    key = _probe_key(code)
    if key in _channels_last_verdicts:
        return _channels_last_verdicts[key]
    cache = _cache_dir() / "channels_last.json"
    try:
        verdicts = json.loads(cache.read_text(encoding="utf-8"))
        verdicts = verdicts if isinstance(verdicts, dict) else {}
    except (OSError, ValueError):
        verdicts = {}
    if isinstance(verdicts.get(key), bool):
        safe = verdicts[key]
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
            )
            safe = done.returncode == 0 and "channels-last ok" in done.stdout
            outcome = f"exit status {done.returncode}"
            if done.returncode < 0:
                outcome = f"killed by signal {-done.returncode}"
        except (OSError, subprocess.TimeoutExpired) as err:
            safe, outcome = False, type(err).__name__
        if safe or outcome != "TimeoutExpired":  # a slow machine is not a verdict
            verdicts[key] = safe
            _write_json_atomically(cache, verdicts)
        if not safe:
            rank_zero_warn(
                f"model.channels_last: a channels-last {'bf16 ' if bf16 else ''}training step on "
                f"this CPU with torch "
                f"{torch.__version__} failed in a check run in a subprocess ({outcome}), so this "
                "run trains in the default memory format (slower, same results). Set "
                "model.channels_last: false to skip the check; a newer torch may fix it"
            )
    _channels_last_verdicts[key] = safe
    return safe


def _write_json_atomically(path: Path, content: Any) -> None:
    try:
        atomic_write_text(path, json.dumps(content, indent=2))
    except OSError:  # a read-only home: the check runs again next time
        pass
