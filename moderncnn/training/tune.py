"""``moderncnn tune``: hyperparameter search over any config key, with Optuna.

A search space is a YAML mapping from dotted config keys to a range or a list of choices::

    model.lr: {low: 0.01, high: 1.0, log: true}        # float (log-uniform)
    model.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}
    model.warmup_epochs: {low: 0.0, high: 1.0, step: 0.25}
    data.init_args.batch_size: {choices: [64, 128, 256]}
    model.model_kwargs: {choices: [{channels: [8, 16]}, {channels: [16, 32]}]}
    trainer.max_epochs: {low: 2, high: 6}              # int: both bounds are integers

Each trial trains the base config with its values (:mod:`moderncnn.training.trials`) into
``OUT/trials/<study>/trial<N>/`` and scores its best validation accuracy; Optuna's TPE sampler
proposes the values and its median pruner stops a trial whose validation accuracy after an epoch is
below the median of earlier trials' at that epoch (Optuna's Lightning pruning callback).

The study lives in a storage: by default a journal file, ``OUT/study.journal``, that several
processes on this machine can share; with ``--storage`` any URL Optuna accepts
(``sqlite:///tune.db``, ``postgresql://user@host/db``) workers on many machines run the same
command and share one study. At the end ``OUT/best.yaml`` is the base config with the best
values set (``moderncnn fit -c OUT/best.yaml`` trains it), beside ``history.png`` and
``importance.png``.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import yaml
from lightning.pytorch.utilities import rank_zero_only

from moderncnn.io.atomic import atomic_write, atomic_write_text
from moderncnn.io.errors import ConfigError, MissingFileError

from .framework_internals import spawns_its_processes
from .studies import (
    RECORD_ATTR,
    StudyStorage,
    check_record,
    check_study_name,
    check_trial_folders,
    default_study_name,
    load_study,
    study_record,
)
from .trials import check_trial_config, read_config, run_trial, set_dotted

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "read_space", "show_study", "tune"]

MONITOR = "val_acc"  # the objective, maximised; reported to the pruner after every epoch


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a float or int range, or a list of choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def spec(self) -> dict[str, Any]:
        """This dimension as plain data (the study's record of its search space)."""
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step, "choices": list(self.choices)}  # fmt: skip

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key (a choice that is a list or mapping comes back whole)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, log=self.log, step=self.step or 1
            )
        return decode_choice(
            trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices])
        )


def encode_choice(value: Any) -> Any:
    """Optuna's choices are scalars: a list or mapping is stored as its JSON text."""
    return (
        value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)
    )


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_space(path: str | Path) -> list[Param]:
    """The search space of a YAML file; one-line errors naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"search space {path} does not exist; give a YAML file")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{path}: expected a mapping of dotted keys to {{low, high}} or {{choices}}"
        )
    return [_param(path, str(key), spec) for key, spec in space.items()]


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}"
        )
    unknown = set(spec) - {"low", "high", "log", "step", "choices", "type"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {sorted(unknown)[0]!r} (low, high, log, step, choices, type)"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Param(key, "choice", choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must both be numbers, got {low!r} and {high!r}")
    if low >= high:
        raise ConfigError(f"{where}: low must be below high, got low={low}, high={high}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
    step = spec.get("step")
    if log and step is not None:
        raise ConfigError(f"{where}: give log or step, not both (Optuna allows one)")
    kind = spec.get("type") or (
        "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    )
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type must be int or float, got {kind!r}")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def space_values(param: Param) -> list[Any]:
    """The values of ``param`` whose configs are built before the first trial: every choice,
    or a range's two ends (a value the model or data refuses is usually an end: 0, -1, huge)."""
    if param.kind == "choice":
        return list(param.choices)
    cast = int if param.kind == "int" else float
    return [cast(param.low), cast(param.high)]


def check_space_configs(
    config: Path,
    space: Path,
    base: dict[str, Any],
    overrides: dict[str, Any],
    params: list[Param],
    check: Callable[[L.Trainer], None],
) -> None:
    """Builds the config of every space value once (each key's values, the others at their
    first) and ``check``s its Trainer: a value the model, data module or Trainer refuses stops
    ``tune`` before a trial. Only a refusal of a combination can still come from a trial."""
    first = {p.key: space_values(p)[0] for p in params}
    named = ", ".join(f"{key}={value!r}" for key, value in first.items())
    check_trial_config(base, {**overrides, **first}, f"{config} with {named}", check)
    for param in params:
        for value in space_values(param)[1:]:
            settings = {**overrides, **first, param.key: value}
            check_trial_config(base, settings, f"{space}: {param.key}={value!r}", check)


def make_sampler_and_pruner(
    seed: int | None, startup_trials: int, warmup_epochs: int
) -> dict[str, Any]:
    """TPE sampler and median pruner, as ``optuna.create_study``'s keyword arguments."""
    import optuna

    for flag, value in (("--startup_trials", startup_trials), ("--warmup_epochs", warmup_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{flag} must be a whole number >= 0, got {value!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: parallel workers do not all propose the same point (Optuna's advice).
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
    )
    return {"sampler": sampler, "pruner": pruner}


def open_study(
    out: Path, storage: StudyStorage, study_name: str, record: dict[str, Any], **kwargs: Any
) -> optuna.Study:
    """Joins the study, or creates it, once every check passed; refused, nothing is written.

    Refused: a study made from another record (:func:`~.studies.check_record`), and trial
    folders in ``OUT/trials/<study>/`` that the study does not have.
    """
    import optuna

    folders = sorted((out / "trials" / study_name).glob("trial*"))  # before the study's trials
    where = f"study {study_name!r} in {storage.text}"
    study, opened = load_study(storage, study_name, **kwargs)
    known = check_record(study, record, storage) if study is not None else False
    numbers = {t.number for t in study.get_trials(deepcopy=False)} if study is not None else set()
    check_trial_folders(folders, numbers, where)
    if study is None:
        out.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            storage=opened or storage.open(), study_name=study_name, direction="maximize",
            load_if_exists=True, **kwargs,
        )  # fmt: skip
        known = check_record(study, record, storage)  # another worker may have made it first
    if not known:
        study.set_user_attr(RECORD_ATTR, record)
    return study


def check_distributed(trainer: L.Trainer, storage: StudyStorage) -> None:
    """A DDP trial must be spawned from this process (``trainer.strategy: ddp_spawn``) and keep
    its study in a database: the ``ddp`` launcher would start every process's own ``tune``."""
    if trainer.world_size == 1:
        return
    if not spawns_its_processes(trainer):
        raise ConfigError(
            f"trainer.devices/num_nodes make a {trainer.world_size}-process trial: set "
            "trainer.strategy: ddp_spawn (each trial is started from the tune process)"
        )
    if not storage.is_database:
        raise ConfigError(
            "a multi-process (DDP) trial reports to the pruner through a database: give "
            "--storage sqlite:///tune.db or postgresql://..."
        )


def tune(
    config: str | Path,
    space: str | Path,
    trials: int,
    out: str | Path = "tune",
    storage: str | None = None,
    study_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
    startup_trials: int = 5,
    warmup_epochs: int = 1,
) -> optuna.Study:
    """Search hyperparameters with Optuna (TPE, median pruning): run trials of a study.

    More workers may run theirs at the same time.

    Args:
        config: the base training config (a YAML or shipped config name).
        space: the search space YAML: dotted key -> range or choices.
        trials: trials this call runs; the study's total is the sum over all calls.
        out: folder of the trial runs, the journal file and the reports.
        storage: an Optuna storage URL (sqlite:///tune.db, postgresql://...) or a journal
            file; None: out/study.journal.
        study_name: a plain name; default: the base config's file name without its suffix
            and 8 hex digits of the hash of the config, overrides and space.
        overrides: dotted keys set in every trial ({"trainer.max_epochs": 5}); on the
            command line any --KEY VALUE with a dotted key (--trainer.max_epochs 5).
        seed: the TPE sampler's seed (None: a different search each run).
        startup_trials: finished trials before the pruner starts pruning.
        warmup_epochs: epochs of a trial that are never pruned.

    Everything is checked before a trial starts or a file is written: the arguments, the
    config of every search-space value, the storage and the study's record.
    """
    try:
        import optuna
        import optuna_integration  # noqa: F401  (its Lightning pruning callback, per trial)
    except ImportError as err:
        raise ConfigError(
            f"moderncnn tune needs Optuna ({err}): pip install 'moderncnn[tune]'"
        ) from err
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials!r}")
    study_args = make_sampler_and_pruner(seed, startup_trials, warmup_epochs)
    if study_name is not None:
        check_study_name(study_name)
    base, params, out = read_config(config), read_space(space), Path(out)
    overrides = dict(overrides or {})
    resolved = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(resolved, key, value)
    record = study_record(resolved, {p.key: p.spec() for p in params})
    study_name = study_name or default_study_name(config, record)
    study_storage = StudyStorage.resolve(out, storage)

    def check(trainer: L.Trainer) -> None:
        check_distributed(trainer, study_storage)

    check_space_configs(Path(config), Path(space), base, overrides, params, check)
    study_storage.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out, study_storage, study_name, record, **study_args)

    def objective(trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        settings = {**overrides, **{p.key: p.suggest(trial) for p in params}}
        folder = out / "trials" / study.study_name / f"trial{trial.number}"
        trial.set_user_attr("run_dir", str(folder))
        pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
        result = run_trial(
            base, settings, folder, name=f"trial{trial.number}", test=False,
            callbacks=[pruning], check=check,
            extra={"study": study.study_name, "trial": trial.number}, fresh=True,
        )  # fmt: skip
        pruning.check_pruned()  # a DDP trial's pruning is known here (its processes are gone)
        return result.val_acc

    for _ in range(trials):
        run_one(study, objective)
    if rank_zero_only.rank == 0:
        write_reports(study, base, params, overrides, out)
    return study


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    """One trial through Optuna's ask-and-tell interface: pruned, failed or finished.

    A failed trial is told FAIL and its error raised as it is, one line for a refusal
    (``study.optimize`` would first log Optuna's "Trial failed" traceback).
    """
    import optuna

    trial = study.ask()
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except BaseException:  # Ctrl-C too, as study.optimize does
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


def best_config(
    study: optuna.Study, base: dict[str, Any], params: list[Param], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The base config with the command line's overrides and the best trial's values set."""
    config = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(config, key, value)
    for param in params:
        set_dotted(config, param.key, decode_choice(study.best_trial.params[param.key]))
    return config


def write_reports(
    study: optuna.Study,
    base: dict[str, Any],
    params: list[Param],
    overrides: Mapping[str, Any],
    out: Path,
) -> None:
    """``best.yaml`` and Optuna's history and importance plots (when the study allows them)."""
    import optuna

    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not finished:
        print(f"study {study.study_name}: no trial finished yet; no best.yaml", file=sys.stderr)
        return
    best = study.best_trial
    header = (
        f"# Best of study {study.study_name!r}: trial {best.number}, {MONITOR} = {best.value:.4f}\n"
        f"# ({len(finished)} finished trials). Train it: moderncnn fit -c {out / 'best.yaml'}\n"
    )
    text = yaml.safe_dump(best_config(study, base, params, overrides), sort_keys=False)
    atomic_write_text(out / "best.yaml", header + text)
    save_plots(study, out)


def save_plots(study: optuna.Study, out: Path) -> list[Path]:
    """``history.png`` and ``importance.png`` with Optuna's matplotlib plots.

    Importance is PED-ANOVA's (``PedAnovaImportanceEvaluator``), which needs no other package;
    Optuna's default, fANOVA, needs scikit-learn. It needs at least two finished trials.
    """
    import matplotlib.pyplot as plt
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as plots

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        drawings = {
            "history.png": lambda: plots.plot_optimization_history(study),
            "importance.png": lambda: plots.plot_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator()
            ),
        }
        for name, draw in drawings.items():
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                print(f"{name}: not drawn ({err})", file=sys.stderr)
                continue
            figure = ax.figure
            figure.tight_layout()
            # Atomically: workers sharing OUT may write the same file at the same time.
            atomic_write(out / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=100))
            plt.close(figure)  # optuna draws with pyplot: free it
            written.append(out / name)
    return written


def show_study(study: optuna.Study, arguments: dict[str, Any]) -> int:
    """What ``moderncnn tune`` prints: the best trial so far and the study's size."""
    out = Path(arguments["out"])
    if (out / "best.yaml").is_file():
        best = study.best_trial
        print(f"best: trial {best.number}, {MONITOR} = {best.value:.4f}, {best.params}")
        print(f"{out / 'best.yaml'} (train it: moderncnn fit -c {out / 'best.yaml'})")
    print(f"study {study.study_name}: {len(study.trials)} trials")
    return 0
