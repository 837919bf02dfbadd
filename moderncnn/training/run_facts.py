"""What a run was, in its folder's ``run.json``: the model (parameters, MACs, layer table), the
data, the epochs, wall times and hardware; what the run report's "at a glance" table shows.

:class:`RunFacts` writes it during the run; :func:`read_run_facts` and :func:`valid_facts`
read it back, keeping only values of the expected type and range.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from moderncnn.io.atomic import atomic_write_text
from moderncnn.models.layer_table import summary
from moderncnn.viz._run_folder import LinkOutsideError, read_text, run_file

from .callbacks import run_dir

RUN_FACTS = "run.json"


def read_run_facts(folder: str | Path) -> dict[str, Any]:
    """``run.json`` of a run folder, or {} where there is none, it cannot be read, or it is a
    link leading out of the folder. The values are as written: see :func:`valid_facts`."""
    try:
        path = run_file(folder, RUN_FACTS)
        facts = json.loads(read_text(path)) if path is not None else {}
    except (OSError, ValueError, RecursionError, LinkOutsideError):
        return {}
    return facts if isinstance(facts, dict) else {}


# The facts of run.json and what each must be to be shown; a hand-edited value of another type,
# or NaN, or 1e300 seconds, is left out by valid_facts (the report shows the rest).
_TEXT_FACTS = ("model", "data", "precision", "best_monitor", "tested_checkpoint", "summary")
_COUNT_FACTS = ("parameters", "train_images", "val_images", "test_images", "epochs", "steps")
_HARDWARE_TEXT, _HARDWARE_COUNTS = ("gpu", "cpu", "torch"), ("cpu_cores", "torch_threads")
MAX_SECONDS = 10**9  # 30 years: more is no wall time (timedelta itself stops at 10**14)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any, limit: float = math.inf) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < limit
    )


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _seconds(value: Any) -> bool:
    return _number(value, MAX_SECONDS)


def _metric(value: Any) -> bool:
    return _number(value, 1e6)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


# What each plain fact must be to be shown.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(_TEXT_FACTS, _text),
    **dict.fromkeys(_COUNT_FACTS, _count),
    **dict.fromkeys(("fit_seconds", "test_seconds"), _seconds),
    "best_val": _metric,
}
_LATER_CHECKS: dict[str, Callable[[Any], bool]] = {
    "class_names": _names,
    "model_kwargs": lambda value: isinstance(value, dict),
}


def valid_facts(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of a ``run.json`` that have the type and range :class:`RunFacts` writes."""
    valid = {key: facts[key] for key, ok in _CHECKS.items() if ok(facts.get(key))}
    size = facts.get("input_size")
    if _number(facts.get("macs")) and isinstance(size, list) and size and all(map(_count, size)):
        valid |= {"macs": facts["macs"], "input_size": size}
    valid |= {key: facts[key] for key, ok in _LATER_CHECKS.items() if ok(facts.get(key))}
    hardware = facts.get("hardware")
    if isinstance(hardware, dict):
        text = {k: hardware[k] for k in _HARDWARE_TEXT if _text(hardware.get(k))}
        counts = {k: hardware[k] for k in _HARDWARE_COUNTS if _count(hardware.get(k))}
        valid["hardware"] = text | counts
    metrics = facts.get("test_metrics")
    if isinstance(metrics, dict):
        valid["test_metrics"] = {k: v for k, v in metrics.items() if _text(k) and _metric(v)}
    return valid


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), what benchmarks and run reports name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a run used: CPU, cores, torch threads, GPU and library versions."""
    facts: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _dataset_size(loader: Any) -> int | None:
    loaders = loader if isinstance(loader, list | tuple) else [loader]
    try:
        return sum(len(item.dataset) for item in loaders)
    except (TypeError, AttributeError):
        return None


class RunFacts(L.Callback):
    """Writes ``run.json`` into the run folder: what the report shows "at a glance"."""

    def __init__(self) -> None:
        self._started: float | None = None

    def _update(self, trainer: L.Trainer, **facts: Any) -> None:
        folder = run_dir(trainer)
        if folder is None or not folder.is_dir():
            return
        merged = read_run_facts(folder) | facts
        atomic_write_text(folder / RUN_FACTS, json.dumps(merged, indent=2, default=str) + "\n")

    def _model_facts(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        card = getattr(pl_module, "card", None)
        network = getattr(pl_module, "model", pl_module)
        facts: dict[str, Any] = {
            "model": getattr(card, "architecture", type(network).__name__),
            "model_kwargs": dict(getattr(card, "model_kwargs", {}) or {}),
            "parameters": sum(p.numel() for p in network.parameters()),
            "class_names": card.names() if card is not None else None,
            "data": type(trainer.datamodule).__name__ if trainer.datamodule else None,
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__.replace("Accelerator", ""),
            "devices": trainer.num_devices,
            "hardware": hardware(),
        }
        preprocess = getattr(card, "preprocess", None)
        if preprocess is not None:
            size = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
            try:
                table = summary(network, size, depth=2)
            except Exception:  # noqa: BLE001 -- a network the table cannot trace (compiled,
                # custom): the facts go without it; a report never stops a finished run
                return facts
            facts |= {"input_size": list(size), "macs": table.macs, "summary": str(table)}
        return facts

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        facts = self._model_facts(trainer, pl_module)
        facts["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        facts["resumed_from"] = trainer.ckpt_path
        self._update(trainer, **facts)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sizes = {"train_images": _dataset_size(trainer.train_dataloader)}
        sizes["val_images"] = _dataset_size(trainer.val_dataloaders)
        self._update(trainer, **sizes)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = trainer.checkpoint_callback
        score = getattr(best, "best_model_score", None)
        seconds = None if self._started is None else time.perf_counter() - self._started
        self._update(
            trainer,
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            fit_seconds=seconds,
            best_val=None if score is None else float(score),
            best_monitor=getattr(best, "monitor", None),
            best_checkpoint=getattr(best, "best_model_path", None) or None,
        )

    @rank_zero_only
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        if not (run_dir(trainer) or Path()).joinpath(RUN_FACTS).is_file():  # `moderncnn test`
            self._update(trainer, **self._model_facts(trainer, pl_module))
        self._update(
            trainer,
            tested_checkpoint=trainer.ckpt_path,
            test_images=_dataset_size(trainer.test_dataloaders),
        )

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = None if self._started is None else time.perf_counter() - self._started
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")
        }
        self._update(trainer, test_seconds=seconds, test_metrics=metrics)
