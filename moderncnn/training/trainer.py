"""``moderncnn.Trainer``: Lightning's ``Trainer`` with the defaults of ``moderncnn fit``.

A notebook run then writes the run folder the CLI writes, ``lightning_logs/version_N/``:
``metrics.csv`` (with the learning rate), TensorBoard events, ``hparams.yaml``, ``config.yaml``,
``checkpoints/`` (best by ``val_acc`` and ``last.ckpt``), ``curves.png`` after ``fit``, and
after ``test`` ``confusion_matrix.png``/``.csv`` and ``per_class_accuracy.csv``::

    trainer = moderncnn.Trainer(max_epochs=3, deterministic=True)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, ckpt_path="best")
"""

from __future__ import annotations

import ast
import html
import inspect
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from .callbacks import ResumableModelCheckpoint, global_seed, run_dir
from .precision import PrecisionTrainer
from .preflight import UNKNOWN
from .run_folders import (
    CHECKPOINT_DEFAULTS,
    LOG_ROOT,
    TRAINER_DEFAULTS,
    default_callbacks,
    discard_unfinished_run_folder,
    fix_logger_versions,
    prepare_run_folder,
)

__all__ = ["Results", "RunTrainer", "SaveRunConfig", "Trainer"]

# Hyperparameters that the data module gives the model (linked in the CLI, so not config keys).
LINKED_MODEL_KEYS = ("num_classes", "in_chans", "class_names", "preprocess")


class RunTrainer(PrecisionTrainer):
    """``lightning.Trainer`` that checks and opens its run folder before each run, as
    ``moderncnn fit`` does (:func:`~moderncnn.training.run_folders.prepare_run_folder`): before
    Lightning creates the loggers' folders, so a refused run writes nothing and two runs started
    at once get two ``version_N`` folders. Its arguments are exactly Lightning's
    (``from_config``), and ``precision="auto"`` (bf16-mixed where the chip has bf16 units,
    else fp32)."""

    def fit(self, model: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        with self._run_folder("fit", model, args, kwargs):
            return super().fit(model, *args, **kwargs)

    def validate(
        self, model: L.LightningModule | None = None, *args: Any, **kwargs: Any
    ) -> Results:
        with self._run_folder("validate", model, args, kwargs):
            return Results(super().validate(model, *args, **kwargs))

    def test(self, model: L.LightningModule | None = None, *args: Any, **kwargs: Any) -> Results:
        with self._run_folder("test", model, args, kwargs):
            return Results(super().test(model, *args, **kwargs))

    def predict(self, model: L.LightningModule | None = None, *args: Any, **kwargs: Any) -> Any:
        with self._run_folder("predict", model, args, kwargs):
            return super().predict(model, *args, **kwargs)

    @contextmanager
    def _run_folder(
        self, stage: str, model: Any, args: tuple, kwargs: dict[str, Any]
    ) -> Iterator[None]:
        """Opens the run folder; a run that fails before its first checkpoint removes it, as
        ``moderncnn fit`` does, so ``lightning_logs/version_N`` is never a broken run's."""
        try:
            self._prepare(stage, model, args, kwargs)
            yield
        except BaseException:
            discard_unfinished_run_folder(self)
            raise

    def _prepare(self, stage: str, model: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        bound = inspect.signature(getattr(L.Trainer, stage)).bind(self, model, *args, **kwargs)
        ckpt_path = bound.arguments.get("ckpt_path")
        module = model if model is not None else self.lightning_module
        ckpt_path = None if ckpt_path is None else str(ckpt_path)
        seed = global_seed()  # a resume keeps its run's seed; not checked where none was set
        prepare_run_folder(
            self, module, stage == "fit", ckpt_path, UNKNOWN if seed is None else seed
        )


class Trainer(RunTrainer):
    """A ``lightning.Trainer`` that logs, checkpoints and reports as ``moderncnn fit`` does.

    Every ``lightning.Trainer`` argument works as documented there. Ours are added to yours:

    - ``logger``: TensorBoard and CSV loggers into ``{default_root_dir}/lightning_logs/
      version_N`` come first, then any you pass; ``logger=False`` logs nothing.
    - ``callbacks``: :func:`~moderncnn.training.run_folders.default_callbacks` (per-epoch seeding,
      learning-rate log, divergence warning, learning curves, confusion matrix) and the best
      and last checkpoints (unless ``enable_checkpointing=False``), then yours.
    - ``deterministic`` defaults to ``"warn"``, as in the CLI.
    - ``PL_TRAINER_<NAME>`` environment variables set arguments not given, as for
      ``lightning.Trainer`` (:func:`trainer_arguments_from_env`).

    Args:
        moderncnn_defaults: False: exactly ``lightning.Trainer`` (none of the above).
        **kwargs: ``lightning.Trainer`` arguments.
    """

    def __init__(self, *, moderncnn_defaults: bool = True, **kwargs: Any) -> None:
        self.moderncnn_defaults = moderncnn_defaults
        kwargs = {**trainer_arguments_from_env(), **kwargs}
        self.init_arguments = {k: v for k, v in kwargs.items() if _plain(v)}
        if moderncnn_defaults:
            kwargs = _with_defaults(kwargs)
        super().__init__(**kwargs)
        fix_logger_versions(self)


def trainer_arguments_from_env() -> dict[str, Any]:
    """``lightning.Trainer`` arguments set as ``PL_TRAINER_<NAME>`` environment variables
    (``PL_TRAINER_LIMIT_TRAIN_BATCHES=2``), as Lightning's own Trainer reads them; arguments
    given in the call win. Lightning finds them in the signature of ``__init__``, which for a
    subclass taking ``**kwargs`` (ours) names none, so they are read here."""
    found = {}
    for name in inspect.signature(L.Trainer.__init__).parameters:
        value = os.environ.get(f"PL_TRAINER_{name.upper()}")
        if value is None or name == "self":
            continue
        try:
            found[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            found[name] = value  # a word: "cpu", "bf16-mixed"
    return found


class Results(list):
    """Lightning's result of ``test``/``validate`` (one {metric: value} per data loader), which
    a notebook cell or the REPL shows as a table: ``results[0]["test_acc"]`` still works."""

    def __repr__(self) -> str:
        lines = []
        for index, metrics in enumerate(self):
            if len(self) > 1:
                lines.append(f"data loader {index}")
            width = max((len(name) for name in metrics), default=0)
            lines += [f"{name:<{width}}  {_number(v)}" for name, v in sorted(metrics.items())]
        return "\n".join(lines) or "no metrics"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _with_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = {"deterministic": TRAINER_DEFAULTS["deterministic"], **kwargs}
    root = kwargs.get("default_root_dir") or "."
    ours: list[Logger] = [
        TensorBoardLogger(root, name=LOG_ROOT),  # TensorBoard first: the CLI's order
        CSVLogger(root, name=LOG_ROOT),
    ]
    logger = kwargs.get("logger")
    if logger is None or logger is True:
        kwargs["logger"] = ours
    elif logger is not False:
        kwargs["logger"] = ours + _as_list(logger)
    callbacks: list[Callback] = [*default_callbacks(), SaveRunConfig()]
    if kwargs.get("enable_checkpointing", True) is not False:
        callbacks.append(ResumableModelCheckpoint(**CHECKPOINT_DEFAULTS))
    kwargs["callbacks"] = callbacks + _as_list(kwargs.get("callbacks"))
    return kwargs


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, Iterable) else [value]


class SaveRunConfig(Callback):
    """Writes ``config.yaml`` into a run folder that has none, as ``moderncnn fit`` does: the
    model's and data module's arguments, so ``moderncnn fit -c config.yaml`` repeats the run
    when the model is a registered name and the data one of our data modules."""

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = run_dir(trainer)
        if folder is None or any(isinstance(c, SaveConfigCallback) for c in trainer.callbacks):
            return
        path = folder / "config.yaml"
        if path.exists():
            return
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(run_config(trainer, pl_module), sort_keys=False))


def run_config(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """A training config (the CLI's sections) describing this run, as far as it is plain data."""
    config: dict[str, Any] = {}
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        config["seed_everything"] = int(seed)
    model = {k: v for k, v in dict(pl_module.hparams).items() if k not in LINKED_MODEL_KEYS}
    config["model"] = _plain_copy(model)
    data = trainer.datamodule
    if data is not None:
        init = _plain_copy(dict(getattr(data, "hparams", {})))
        config["data"] = {"class_path": f"{type(data).__module__}.{type(data).__qualname__}"}
        config["data"]["init_args"] = init
    config["trainer"] = _plain_copy(getattr(trainer, "init_arguments", {}))
    return config


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain data (what a YAML config can hold)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, Path)


def _plain_copy(values: dict[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in values.items() if _plain(v)}
