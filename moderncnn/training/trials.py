"""One trial: a training config with some keys set, trained into its own folder and measured.

``moderncnn compare`` runs a grid of trials (models x seeds), ``moderncnn tune`` the trials that
Optuna asks for; both go through :func:`run_trial`. A trial folder is a run folder as
``moderncnn fit`` writes it (``metrics.csv``, TensorBoard events, ``checkpoints/``) plus
``trial.yaml``, the exact config it ran (``moderncnn fit -c trial.yaml`` repeats it), and, once
it has finished, ``result.json``, written last and atomically: a folder without it is unfinished.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.configs import find_config
from moderncnn.io.errors import ConfigError, DataError, MissingFileError, ModernCNNError
from moderncnn.models.layer_table import summary
from moderncnn.viz import read_metrics

from .cli import one_message
from .config import from_config
from .preflight import check_devices, check_fit_limits

__all__ = [
    "RESULT_FILE",
    "TRIAL_CONFIG",
    "TrialResult",
    "check_trial_config",
    "config_differences",
    "describe_differences",
    "parse_overrides",
    "read_config",
    "read_result",
    "run_trial",
    "set_dotted",
]

RESULT_FILE = "result.json"
TRIAL_CONFIG = "trial.yaml"


@dataclass
class TrialResult:
    """What a finished trial measured; ``result.json`` holds exactly these fields."""

    name: str  # the model's name in a compare, "trial<N>" in a tune
    seed: int
    settings: dict[str, Any]  # the dotted keys this trial set on the base config
    val_acc: float  # best validation accuracy over the epochs (the best checkpoint's)
    test_acc: float | None  # of the best checkpoint; None when the trial was not tested
    test_loss: float | None
    val_curve: list[float]  # validation accuracy after each epoch
    params: int
    macs: int  # multiply-accumulates of one image's forward pass
    train_images_per_s: float  # training steps only (forward, backward, optimiser)
    wall_s: float  # the whole trial: building, training, validation and test
    epochs: int
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def read_config(path: str | Path) -> dict[str, Any]:
    """A YAML training config (a file, or the name of one that ships) as a dict; one-line
    errors naming the file."""
    path = find_config(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a training config (a mapping with model:, data:, ...)")
    return config


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Sets ``config[a][b][c] = value`` for ``key`` ``"a.b.c"``, making the missing levels."""
    parts = key.removeprefix("--").split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"cannot set {key}: {where} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(args: Sequence[str], what: str = "override") -> dict[str, Any]:
    """``["--trainer.max_epochs", "5", "--model.lr=0.1"]`` -> ``{"trainer.max_epochs": 5, ...}``.

    Values are read as YAML, as on ``moderncnn fit``'s command line (``5`` is a number,
    ``[8, 16]`` a list, ``sgd`` a string).
    """
    overrides: dict[str, Any] = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"{what} {arg!r}: expected --KEY VALUE or --KEY=VALUE")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args):
            key, text = arg[2:], args[i + 1]
            i += 2
        else:
            raise ConfigError(f"{what} {arg}: no value follows it")
        overrides[key] = yaml_value(text, f"{what} --{key}")
    return overrides


def yaml_value(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {text!r} is not a YAML value") from err


def trial_config(
    base: dict[str, Any], settings: dict[str, Any], folder: Path, seed: int | None
) -> dict[str, Any]:
    """The base config with ``settings`` set, logging into ``folder`` itself (no version_N)."""
    config = copy.deepcopy(base)
    for key, value in settings.items():
        set_dotted(config, key, value)
    if seed is not None:
        config["seed_everything"] = seed
    # The trial folder is the run folder: both loggers write there (version "" adds no level).
    loggers = [
        {"class_path": f"lightning.pytorch.loggers.{kind}", "init_args": {
            "save_dir": str(folder), "name": "", "version": ""}}
        for kind in ("TensorBoardLogger", "CSVLogger")
    ]  # fmt: skip
    config.setdefault("trainer", {})["logger"] = loggers
    config["test_after_fit"] = False  # the trial tests the best checkpoint itself
    return config


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT = _Absent()


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` wherever two configs differ, in key order."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(prefix.removesuffix("."), old, new)]
    differences = []
    for key in [*old, *(k for k in new if k not in old)]:
        differences += config_differences(
            old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}."
        )
    return differences


def describe_differences(differences: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """``model.lr: 0.4 there, 0.01 now; ...``: the first ``limit`` differences, each value cut
    short, so that a message stays one readable line however large the configs."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    parts = [f"{key}: {short(old)} there, {short(new)} now" for key, old, new in differences]
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (seed, accelerators, tips) left out while a config is only built."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _build(config_file: Path, what: str) -> tuple[Any, Any, L.Trainer]:
    """:func:`from_config` and the checks ``trainer.fit`` makes before training (steps,
    schedule, devices), with every refusal of a value as one ConfigError naming ``what``."""
    try:
        model, data, trainer = from_config(config_file)
        check_fit_limits(trainer, model)
        check_devices(trainer)
        return model, data, trainer
    except OSError:
        raise  # an unwritable or full run folder: its own message names the folder
    except (ModernCNNError, ArgumentError, ValueError, MisconfigurationException) as err:
        raise ConfigError(f"{what}: {one_message(err)}") from err


def check_trial_config(
    base: dict[str, Any],
    settings: dict[str, Any],
    what: str,
    check: Callable[[L.Trainer], None] | None = None,
) -> None:
    """Builds the trial's model, data module and Trainer once (and calls ``check`` with the
    Trainer), trains nothing and writes nothing: a config that :func:`run_trial` would refuse
    is refused before any trial trains (``what`` names it: ``"--models resnet18_cifar"``)."""
    with tempfile.TemporaryDirectory(prefix="moderncnn-trial-") as scratch:
        folder = Path(scratch) / "trial"
        config_file = Path(scratch) / TRIAL_CONFIG
        config = trial_config(base, settings, folder, seed=None)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        with _quiet_lightning():
            trainer = _build(config_file, what)[2]
        if check is not None:
            check(trainer)


class TrainingSpeed(Callback):
    """Training images per second over the training steps, and the shape of one image.

    Counts forward, backward and optimiser step, not validation; the first step is left out
    (it includes one-off costs: memory allocation, cuDNN autotuning, lazy initialisation).
    """

    def __init__(self) -> None:
        self.images, self.seconds, self.steps = 0, 0.0, 0
        self.image_shape: tuple[int, ...] | None = None
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        _synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        _synchronize(pl_module.device)
        images = batch[0] if isinstance(batch, list | tuple) else batch
        self.image_shape = tuple(images.shape[1:])
        self.steps += 1
        if self.steps > 1:
            self.images += images.shape[0] * trainer.world_size
            self.seconds += time.perf_counter() - self._start

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trial(
    base: dict[str, Any],
    settings: dict[str, Any],
    folder: str | Path,
    *,
    name: str,
    seed: int | None = None,
    test: bool = True,
    callbacks: Sequence[Callback] = (),
    check: Callable[[L.Trainer], None] | None = None,
    extra: dict[str, Any] | None = None,
    fresh: bool = False,
) -> TrialResult:
    """Trains ``base`` with ``settings`` (dotted keys) into ``folder`` and writes its result.

    Args:
        base: a training config (:func:`read_config`).
        settings: dotted keys to set, e.g. ``{"model.model": "densenet121_cifar"}``.
        folder: the trial folder; it must not hold an earlier run (see :func:`read_result`).
        name: the trial's name in reports.
        seed: ``seed_everything`` of this trial; None keeps the config's.
        test: test the best checkpoint after training (``test_acc``).
        callbacks: more Lightning callbacks (Optuna's pruning callback).
        check: called with the Trainer before training; raises to refuse the trial.
        extra: more fields for ``result.json``.
        fresh: ``folder`` must not exist yet (an existing one is refused, left as it was).

    A trial refused before it trains (a value the model, data or Trainer rejects, ``check``)
    removes the folders it made: it leaves nothing behind.
    """
    folder = Path(folder)
    started = time.perf_counter()
    config = trial_config(base, settings, folder, seed)
    made = _make_folder(folder, fresh)
    try:
        config_file = folder / TRIAL_CONFIG
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        model, data, trainer = _build(config_file, f"trial {name}")
        if check is not None:
            check(trainer)
    except BaseException:
        _remove_made(made)
        raise
    speed = TrainingSpeed()
    trainer.callbacks.extend([speed, *callbacks])
    with warnings.catch_warnings():
        # The trial folder is the run folder of both loggers and holds trial.yaml: Lightning's
        # CSV logger finds it "not empty" and warns that earlier logs will be deleted. The
        # folder is this trial's own (made above; never reused), so there are none.
        warnings.filterwarnings("ignore", message=re.escape(f"Experiment logs directory {folder}"))
        trainer.fit(model, datamodule=data)
    best = trainer.checkpoint_callback
    best_path = getattr(best, "best_model_path", "") or None
    test_acc = test_loss = None
    if test:
        metrics = trainer.test(model, datamodule=data, ckpt_path=best_path, verbose=False)[0]
        test_acc, test_loss = float(metrics["test_acc"]), float(metrics["test_loss"])
    curve = validation_curve(folder / "metrics.csv")
    score = getattr(best, "best_model_score", None)
    result = TrialResult(
        name=name,
        seed=int(config.get("seed_everything", 0) or 0),
        settings=settings,
        val_acc=float(score) if score is not None else max(curve, default=math.nan),
        test_acc=test_acc,
        test_loss=test_loss,
        val_curve=curve,
        params=sum(p.numel() for p in model.model.parameters()),
        macs=_macs(model, speed.image_shape),  # 0 when no training step ran
        train_images_per_s=speed.images_per_s,
        wall_s=time.perf_counter() - started,
        epochs=len(curve),
        run_dir=str(folder),
        extra=extra or {},
    )
    if trainer.is_global_zero:
        write_result(folder, result)
    return result


def _make_folder(folder: Path, fresh: bool) -> list[Path]:
    """Makes ``folder`` and its missing parents; returns the ones it made, deepest first."""
    made = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        made.append(path)
    try:
        folder.mkdir(parents=True, exist_ok=not fresh)
    except FileExistsError as err:
        raise ConfigError(
            f"{folder} already exists and holds another run's trial: a trial folder is never "
            "reused, so it is left as it was; give another --out"
        ) from err
    return made


def _remove_made(made: list[Path]) -> None:
    if made:
        shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()  # only while empty: another worker may have written beside it
        except OSError:
            break


def validation_curve(metrics_csv: Path) -> list[float]:
    """Validation accuracy per epoch, in epoch order (empty before the first validation)."""
    try:
        epochs = read_metrics(metrics_csv)
    except (DataError, MissingFileError):
        return []
    return [m["val_acc"] for _, m in sorted(epochs.items()) if "val_acc" in m]


def _macs(model: Any, image_shape: tuple[int, ...] | None) -> int:
    if image_shape is None:
        return 0
    was_training = model.model.training
    try:
        return int(summary(model.model.cpu(), image_shape).macs)
    finally:
        model.model.train(was_training)


def write_result(folder: Path, result: TrialResult) -> None:
    """``result.json``, atomically: a reader sees no file or the whole file."""
    text = json.dumps(asdict(result), indent=2, allow_nan=True)
    atomic_write_text(folder / RESULT_FILE, text + "\n")


def read_result(folder: str | Path) -> TrialResult | None:
    """The finished trial's result, or None when ``folder`` holds none (yet)."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return TrialResult(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not a trial result ({err}); delete it to rerun the trial"
        ) from err
