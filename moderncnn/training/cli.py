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
import shlex
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import moderncnn.data  # noqa: F401  (lets a config name our data modules by class name)
from moderncnn.io.checkpoint import CheckpointError, read_checkpoint
from moderncnn.io.configs import find_config
from moderncnn.io.errors import ConfigError, ModernCNNError

from .callbacks import (
    ResumableModelCheckpoint,
    run_dir,
    spreadsheet_safe,
)
from .framework_internals import (
    ConfigNamesTheModelCLI,
    checkpoint_saved_by_this_process,
)
from .module import ImageClassifier, preprocess_of
from .precision import PrecisionTrainer
from .preflight import (
    UNKNOWN,
    OutputFolderError,
    recorded_seed,
)
from .run_folders import (
    CHECKPOINT_DEFAULTS,
    TRAINER_DEFAULTS,
    default_callbacks,
    discard_unfinished_run_folder,
    fix_logger_versions,
    prepare_run_folder,
)
from .seeds import pop_seeds, print_summary, run_seeds, write_summary


class RunStopped(SystemExit):
    """A run stopped by SIGTERM: exit status 143 (128 + 15), as a shell reports the signal."""

    def __init__(self, subcommand: str, where: str, last: Path | None) -> None:
        super().__init__(143)
        self.subcommand, self.where, self.last = subcommand, where, last

    def message(self, argv: list[str]) -> str:
        said = f"moderncnn {self.subcommand}: stopped by SIGTERM at {self.where}"
        if self.subcommand != "fit":
            return f"{said}; run the command again"
        if self.last is None:
            return f"{said}; no checkpoint was written yet (one is saved each epoch): start again"
        args, skip = [], False
        for arg in argv:  # the same command, with --ckpt_path last instead of its own
            if not skip and arg != "--ckpt_path" and not arg.startswith("--ckpt_path="):
                args.append(arg)
            skip = arg == "--ckpt_path"
        command = shlex.join(["moderncnn", *args, "--ckpt_path", "last"])
        return f"{said}; the last saved checkpoint is {self.last}. Resume with: {command}"


class ModernCNNCLI(ConfigNamesTheModelCLI):
    """LightningCLI with moderncnn's links, checkpointing, run folder and reports.

    ``seed_series``: the run is one seed of ``fit --seeds N``, so ``--ckpt_path last`` means
    the newest ``last.ckpt`` of a run with this seed (each seed resumes its own run).
    """

    def __init__(self, *args: Any, seed_series: bool = False, **kwargs: Any) -> None:
        """Parses, builds and runs; a run that fails or is stopped before its first checkpoint
        leaves no run folder behind, and SIGTERM (``timeout``, SLURM, ``docker stop``) exits
        with 143."""
        self.seed_series = seed_series
        try:
            super().__init__(*args, **kwargs)
        except SIGTERMException:
            self._stopped(self.subcommand)
        except BaseException:
            discard_unfinished_run_folder(getattr(self, "trainer", None))
            raise
        if self.subcommand is not None and getattr(self.trainer, "received_sigterm", False):
            self._stopped(self.subcommand)  # validate/test/predict ran on

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
        parser.set_defaults({f"checkpoint.{k}": v for k, v in CHECKPOINT_DEFAULTS.items()})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            self._resolve_checkpoint(subcommand, self.config[subcommand])
            if self.config[subcommand].get("weights_only", False) is None:
                # A checkpoint is tensors and plain containers: never unpickle code from one.
                self.config[subcommand].weights_only = True

    def check_ckpt_path(self) -> None:
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
        if self.seed_series and wanted not in (None, "last"):
            raise ConfigError(
                f"--ckpt_path {wanted} with --seeds: one checkpoint cannot continue every seed's "
                "run; use --ckpt_path last (each seed resumes its own run's last.ckpt)"
            )
        if wanted not in ("last", "best") or config.get("checkpoint.dirpath"):
            return
        if wanted == "best" and subcommand == "fit":
            raise ConfigError(
                "--ckpt_path best: fit resumes from a last.ckpt; use --ckpt_path last"
            )
        roots = {_root_dir(entry) for entry in config.get("trainer.logger") or []} - {None}
        found = sorted(
            (path for root in roots for path in root.glob("*/checkpoints/last.ckpt")),
            key=lambda path: path.stat().st_mtime,
        )
        where = " or ".join(str(root / "*" / "checkpoints" / "last.ckpt") for root in sorted(roots))
        if self.seed_series:  # the newest run of this seed; none: this seed starts afresh
            seed = config.get("seed_everything")
            found = [path for path in found if _seed_of(path) == seed][-1:]
            where = f"{where} of a run with seed_everything {seed}"
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
        fix_logger_versions(trainer)
        return trainer

    def _stopped(self, subcommand: str) -> None:
        trainer = self.trainer
        last = None
        for callback in trainer.checkpoint_callbacks:
            path = getattr(callback, "last_model_path", "")
            if path and Path(path).is_file() and checkpoint_saved_by_this_process(callback):
                last = Path(path)
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        discard_unfinished_run_folder(trainer)
        raise RunStopped(subcommand, where, last)

    def _open_run_folder(self) -> None:
        config = self.config[self.subcommand]
        fitting = self.subcommand == "fit"
        seed = config.get("seed_everything")  # an int by now (LightningCLI set it), or False
        prepare_run_folder(self.trainer, self.model, fitting, config.get("ckpt_path"), seed)

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
                writer.writerow([i, spreadsheet_safe(str(names[k])), f"{p:.4f}"])
        print(f"\n{len(probs)} predictions: {path}")


def _best_checkpoint(last: Path) -> Path:
    """The best checkpoint recorded in a ``last.ckpt`` by its ModelCheckpoint."""
    try:
        checkpoint = read_checkpoint(last)
    except CheckpointError as err:
        beside = sorted(str(path) for path in last.parent.glob("best-*.ckpt"))
        hint = f"; give one of {', '.join(beside)}" if beside else "; give a checkpoint's path"
        raise CheckpointError(
            f"--ckpt_path best: the best checkpoint is recorded in {last}, which cannot be "
            f"read ({err}){hint} as --ckpt_path"
        ) from err
    state = checkpoint.get("callbacks", {}) if isinstance(checkpoint, dict) else {}
    for callback_state in (state if isinstance(state, dict) else {}).values():
        best = callback_state.get("best_model_path") if isinstance(callback_state, dict) else None
        if best and Path(best).is_file():
            return Path(best)
    raise FileNotFoundError(f"{last} records no best checkpoint that still exists; use its path")


def _seed_of(last: Path) -> Any:
    """The seed_everything of the run that wrote ``last`` (None if unknown or unreadable)."""
    try:
        seed = recorded_seed(read_checkpoint(last), last)
    except CheckpointError:
        return None
    return None if seed is UNKNOWN else seed


def _root_dir(logger_config: Any) -> Path | None:
    """``save_dir/name`` of a TensorBoard or CSV logger entry of a config (None for others)."""
    init = getattr(logger_config, "init_args", None)
    if init is None or not isinstance(getattr(init, "save_dir", None), str):
        return None
    name = getattr(init, "name", None)
    return Path(init.save_dir) / name if name else Path(init.save_dir)


def build_cli(
    argv: list[str],
    run: bool = True,
    trainer_class: type[Trainer] = PrecisionTrainer,
    seed_series: bool = False,
) -> ModernCNNCLI:
    """The CLI for ``argv`` (with the sub-command first when ``run``); ``trainer_class``: a
    ``Trainer`` subclass with the same arguments (``from_config`` passes one); ``seed_series``:
    one seed of ``fit --seeds N`` (see :class:`ModernCNNCLI`)."""
    with warnings.catch_warnings():
        # `moderncnn fit ...` hands LightningCLI its argv explicitly, which Lightning warns about.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _cli(argv, run, trainer_class, seed_series)


def _cli(
    argv: list[str], run: bool, trainer_class: type[Trainer], seed_series: bool = False
) -> ModernCNNCLI:
    return ModernCNNCLI(
        ImageClassifier,
        LightningDataModule,
        trainer_class=trainer_class,
        subclass_mode_data=True,
        trainer_defaults={
            **TRAINER_DEFAULTS,
            "callbacks": default_callbacks(),
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
        seed_series=seed_series,
    )


def _prog(argv: list[str]) -> str:
    return f"moderncnn {argv[0]}" if argv and not argv[0].startswith("-") else "moderncnn"


def main(argv: list[str] | None = None) -> int:
    """Run ``fit`` (``--seeds N``: once per seed), ``validate``, ``test`` or ``predict``;
    returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        seeds, argv = pop_seeds(argv) if argv[:1] == ["fit"] else (None, argv)
        argv = shipped_configs(argv)
        check_config_files(argv)
        if seeds is None:
            build_cli(argv)
        else:  # `fit --seeds N`: one run per seed, then seeds_K.csv/.md beside the runs
            runs = run_seeds(argv, seeds, partial(build_cli, seed_series=True))
            print_summary(runs, write_summary(runs, argv))
    except RunStopped as stop:
        print(stop.message(argv), file=sys.stderr)
        return 143
    except SystemExit as exit_:  # --help, --print_config
        return exit_.code if isinstance(exit_.code, int) else 0
    except ArgumentError as err:  # an unknown key, a value of the wrong type
        message = " ".join(str(err).split())
        print(f"{_prog(argv)}: error: {message} (see `{_prog(argv)} --help`)", file=sys.stderr)
        return 2
    except (
        ModernCNNError,
        ValueError,
        FileNotFoundError,
        OutputFolderError,
        MisconfigurationException,
    ) as err:
        # A bad value, a missing file, an unwritable run folder: one message, no traceback.
        print(f"{_prog(argv)}: error: {one_message(err)}", file=sys.stderr)
        return 1
    return 0


# A real config has a few hundred values; YAML aliases can make a few lines mean billions.
MAX_CONFIG_VALUES = 100_000
_YAML_SUFFIXES = (".yaml", ".yml")


def shipped_configs(argv: list[str]) -> list[str]:
    """``argv`` with each ``-c``/``--config`` value that is not a file on disk replaced by the
    shipped config of that name (``-c quickstart``; :func:`~moderncnn.io.configs.find_config`).
    A value that is YAML text rather than a name (jsonargparse takes both) is left as it is."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            if _config_name(value):
                out[i] = f"--config={find_config(value)}"
        elif arg in ("-c", "--config") and i + 1 < len(out) and _config_name(out[i + 1]):
            out[i + 1] = str(find_config(out[i + 1]))
    return out


def _config_name(value: str) -> bool:
    return not Path(value).is_file() and not any(c in value for c in ":{}\n")


def check_config_files(argv: list[str]) -> None:
    """Refuses a YAML config whose aliases expand to more than :data:`MAX_CONFIG_VALUES`
    values (a "billion laughs" file), before the parser expands it for minutes or hours.

    Looks at ``-c``/``--config`` files and any other argument naming a ``.yaml`` file.
    """
    paths = []
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if arg in ("-c", "--config") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif value.lower().endswith(_YAML_SUFFIXES):
            paths.append(value)
    for path in dict.fromkeys(paths):
        if Path(path).is_file():
            _check_yaml_expansion(Path(path))


def _check_yaml_expansion(path: Path) -> None:
    try:
        with path.open("rb") as file:
            documents = list(yaml.compose_all(file, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return  # the parser reports it, naming the file
    except RecursionError as err:
        raise ConfigError(f"{path}: nested too deeply to be a config") from err
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:  # an alias is the same node object: counted each use
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_CONFIG_VALUES + 1  # a node inside itself (a recursive alias)
        children: list = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[id(node)] = total
        return total

    try:
        total = sum(size(document) for document in documents if document is not None)
    except RecursionError as err:
        raise ConfigError(f"{path}: nested too deeply to be a config") from err
    if total > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{path}: its YAML aliases (&name / *name) expand to more than {MAX_CONFIG_VALUES} "
            'values, far beyond any config (a "billion laughs" file?); write the values out'
        )


def one_message(err: Exception) -> str:
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
