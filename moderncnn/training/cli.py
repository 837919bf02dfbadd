"""``moderncnn fit|validate|test|predict -c CONFIG``: training from YAML on LightningCLI.

A config's sections are each the ``__init__`` arguments of one class and nothing else:
``model:`` (:class:`~moderncnn.training.module.ImageClassifier`), ``data:`` (a data module, by
``class_path``), ``trainer:`` (Lightning's ``Trainer``) and ``checkpoint:`` (``ModelCheckpoint``).
Beside them: ``seed_everything`` and ``test_after_fit``. The data module tells the model its
classes and channels (``link_arguments``), so a config never states them twice. Every run
writes TensorBoard events, ``metrics.csv``, checkpoints and plots into one folder,
``lightning_logs/version_N/``.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import moderncnn.data  # noqa: F401  (lets a config name our data modules by class name)
from moderncnn.io.checkpoint import read_checkpoint

from .callbacks import (
    ConfusionMatrixReport,
    LearningCurvesPlot,
    ResumableModelCheckpoint,
    SeedEachEpoch,
    run_dir,
)
from .module import ImageClassifier, preprocess_of
from .preflight import (
    LOG_MARGIN_BYTES,
    OutputFolderError,
    check_fit_limits,
    check_output_folder,
    check_resume_checkpoint,
    min_free_bytes,
    run_folders,
)

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


class ModernCNNCLI(LightningCLI):
    """LightningCLI with moderncnn's links, checkpointing, run folder and reports."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data module knows its classes and channels; the model needs them.
        for key in ("num_classes", "in_chans", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.link_arguments(
            "data", "model.preprocess", compute_fn=preprocess_of, apply_on="instantiate"
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, test the best checkpoint on the test split (same run folder)",
        )
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch={epoch}-val_acc={val_acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            self._resolve_checkpoint(subcommand, self.config[subcommand])
            if self.config[subcommand].get("weights_only", False) is None:
                # A checkpoint is tensors and plain containers: never unpickle code from one.
                self.config[subcommand].weights_only = True

    def _parse_ckpt_path(self) -> None:
        """The config, not ``--ckpt_path``, says which model to build.

        Lightning would overwrite the config's ``model:`` section with the checkpoint's
        hyperparameters, silently training another network than the config names; instead a
        checkpoint that does not fit the config's model is refused, naming the difference
        (:func:`~moderncnn.training.preflight.check_resume_checkpoint`, before the run starts).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)  # truncated or unsafe: one message naming the file, now

    def _resolve_checkpoint(self, subcommand: str, config: Namespace) -> None:
        """``--ckpt_path last`` / ``best``: a checkpoint of the newest earlier run.

        Lightning alone looks only in the new run's (empty) checkpoint folder. A resumed run
        logs into a new ``version_N`` folder; its learning curves include the earlier epochs.
        """
        wanted = config.get("ckpt_path")
        if wanted not in ("last", "best") or config.get("checkpoint.dirpath"):
            return
        if wanted == "best" and subcommand == "fit":
            raise ValueError("--ckpt_path best: fit resumes from a last.ckpt; use --ckpt_path last")
        roots = {_root_dir(entry) for entry in config.get("trainer.logger") or []} - {None}
        found = sorted(
            (path for root in roots for path in root.glob("*/checkpoints/last.ckpt")),
            key=lambda path: path.stat().st_mtime,
        )
        where = " or ".join(str(root / "*" / "checkpoints" / "last.ckpt") for root in sorted(roots))
        if not found and subcommand == "fit":
            rank_zero_warn(f"--ckpt_path last: no {where}; training starts from scratch")
            config.ckpt_path = None
            return
        if not found:
            raise FileNotFoundError(f"--ckpt_path {wanted}: no {where}; train with `fit` first")
        path = found[-1] if wanted == "last" else _best_checkpoint(found[-1])
        config.ckpt_path = str(path)
        rank_zero_info(f"--ckpt_path {wanted}: {path}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Fix every logger's version now: asked one after another, after the first one wrote its
        # folder, TensorBoard and CSV would pick two different version_N folders.
        for logger in trainer.loggers:
            _ = logger.version
        return trainer

    def _preflight(self) -> None:
        """Fails now, naming the setting, on what would fail later or lose an earlier run's files:
        an unwritable or full output folder, a fit of zero epochs, a checkpoint that is unsafe
        or made for another model."""
        fitting = self.subcommand == "fit"
        if fitting:
            check_fit_limits(self.trainer, self.model)
        needed = min_free_bytes(self.model) if fitting else LOG_MARGIN_BYTES
        for folder in run_folders(self.trainer):
            check_output_folder(folder, needed)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and "://" not in ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            check_resume_checkpoint(ckpt_path, self.model)

    def _open_run_folder(self) -> None:
        self._preflight()
        # The CSV logger deletes the metrics.csv of a folder that already has files; open it
        # before the config and TensorBoard files are written, so it starts in an empty folder.
        for logger in self.trainer.loggers:
            if isinstance(logger, CSVLogger):
                _ = logger.experiment

    before_fit = before_validate = before_test = before_predict = _open_run_folder

    def after_fit(self) -> None:
        best = self.trainer.checkpoint_callback
        best_path = best.best_model_path if isinstance(best, ModelCheckpoint) else ""
        if self.config["fit"].get("test_after_fit"):
            # Weights of the best validation epoch when there is one, else the final weights.
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best_path or None)
        folder = run_dir(self.trainer)  # not trainer.log_dir: a collective call under DDP
        if self.trainer.is_global_zero and folder is not None:
            print(f"\nrun folder: {folder}")
            if best_path:
                score = best.best_model_score
                note = f" ({best.monitor} = {float(score):.4f})" if score is not None else ""
                print(f"best checkpoint: {best_path}{note}")
            self.after_test()

    def after_test(self) -> None:
        accuracy = self.trainer.callback_metrics.get("test_acc")
        if self.trainer.is_global_zero and accuracy is not None:
            print(f"\nTest accuracy: {float(accuracy):.2%}")

    def after_predict(self) -> None:
        """Writes ``predictions.csv`` (image index, class, probability) into the run folder."""
        batches = self.trainer.predict_loop.predictions
        folder = run_dir(self.trainer)
        if not batches or not self.trainer.is_global_zero or folder is None:
            return
        probs = torch.cat(batches if isinstance(batches[0], torch.Tensor) else batches[0])
        names = self.model.hparams.class_names or [str(i) for i in range(probs.shape[1])]
        best, index = probs.max(dim=1)
        path = folder / "predictions.csv"
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["index", "class", "probability"])
            for i, (p, k) in enumerate(zip(best.tolist(), index.tolist(), strict=True)):
                writer.writerow([i, names[k], f"{p:.4f}"])
        print(f"\n{len(probs)} predictions: {path}")


def _best_checkpoint(last: Path) -> Path:
    """The best checkpoint recorded in a ``last.ckpt`` by its ModelCheckpoint."""
    state = torch.load(last, map_location="cpu", weights_only=True).get("callbacks", {})
    for callback_state in state.values():
        best = callback_state.get("best_model_path") if isinstance(callback_state, dict) else None
        if best and Path(best).is_file():
            return Path(best)
    raise FileNotFoundError(f"{last} records no best checkpoint that still exists; use its path")


def _root_dir(logger_config: Any) -> Path | None:
    """``save_dir/name`` of a TensorBoard or CSV logger entry of a config (None for others)."""
    init = getattr(logger_config, "init_args", None)
    if init is None or not isinstance(getattr(init, "save_dir", None), str):
        return None
    name = getattr(init, "name", None)
    return Path(init.save_dir) / name if name else Path(init.save_dir)


def build_cli(argv: list[str], run: bool = True) -> ModernCNNCLI:
    """The CLI for ``argv`` (with the sub-command first when ``run``)."""
    with warnings.catch_warnings():
        # `moderncnn fit ...` hands LightningCLI its argv explicitly, which Lightning warns about.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _cli(argv, run)


def _cli(argv: list[str], run: bool) -> ModernCNNCLI:
    return ModernCNNCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={
            **TRAINER_DEFAULTS,
            "callbacks": [SeedEachEpoch(), LearningCurvesPlot(), ConfusionMatrixReport()],
        },
        seed_everything_default=42,
        # Errors come back as exceptions, which main() prints in one line (no usage screen).
        parser_kwargs={"prog": "moderncnn", "exit_on_error": False},
        # One place for optimiser settings: ImageClassifier's arguments, not --optimizer too.
        auto_configure_optimizers=False,
        # Plain __init__ arguments in the checkpoint, so ImageClassifier(**hparams) rebuilds it.
        load_from_checkpoint_support=False,
        args=argv,
        run=run,
    )


def _prog(argv: list[str]) -> str:
    return f"moderncnn {argv[0]}" if argv and not argv[0].startswith("-") else "moderncnn"


def main(argv: list[str] | None = None) -> int:
    """Run ``fit``, ``validate``, ``test`` or ``predict``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        build_cli(argv)
    except SystemExit as exit_:  # --help, --print_config
        return exit_.code if isinstance(exit_.code, int) else 0
    except ArgumentError as err:  # an unknown key, a value of the wrong type
        print(f"{_prog(argv)}: error: {err}\n(see `{_prog(argv)} --help`)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OutputFolderError, MisconfigurationException) as err:
        # A bad value, a missing file, an unwritable run folder: one message, no traceback.
        print(f"{_prog(argv)}: error: {_one_message(err)}", file=sys.stderr)
        return 1
    return 0


def _one_message(err: Exception) -> str:
    """The error itself, without jsonargparse's account of the data module's ``class_path`` union.

    A data module's ValueError (``batch_size must be a positive integer, got 0``) reaches us
    wrapped in "Does not validate against any of the Union subtypes", the subtypes and the
    namespace given; keep only the data module's own message.
    """
    text = str(err)
    if "Union subtypes" not in text:
        return text
    reasons = [
        line.strip()[2:]
        for line in text.splitlines()
        if line.strip().startswith("- ") and "NoneType" not in line
    ]
    return f"data: {'; '.join(reasons)}" if reasons else text
