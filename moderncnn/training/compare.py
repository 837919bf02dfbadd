"""``moderncnn compare``: which architecture is best on my data, at what cost, beyond seed noise.

Every model trains on the same data, budget and schedule (one base config), each over several
seeds; each (model, seed) is a trial (:mod:`moderncnn.training.trials`) in
``OUT/runs/<model>/seed<k>/``. Interrupted and run again, finished trials are kept and
unfinished ones rerun. Then::

    OUT/results.csv          one row per model: test accuracy mean, std, per seed, cost
    OUT/results.md           the same as a table, with whether each gap to the best is
                             larger than the seed spread
    OUT/accuracy_vs_macs.png test accuracy (mean +- std) against MACs per image
    OUT/curves.png           every model's validation accuracy per epoch, on one figure

The seed (``seed_everything``) changes the initial weights, the batch order and the
augmentations; the train/validation split (``data.init_args.seed``) stays the config's.
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from lightning.pytorch.utilities import rank_zero_only

from moderncnn.io.atomic import atomic_write, atomic_write_text
from moderncnn.io.errors import ConfigError, DataError
from moderncnn.models import list_models
from moderncnn.viz._figure import figures_not_shown, finish, new_figure

from .seeds import format_mean_std, mean_std, percent
from .trials import (
    TRIAL_CONFIG,
    TrialResult,
    check_trial_config,
    config_differences,
    describe_differences,
    read_config,
    read_result,
    run_trial,
    trial_config,
    yaml_value,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ModelSummary", "compare", "plot_accuracy_vs_macs", "plot_val_curves", "show_comparison"
]  # fmt: skip

CSV_COLUMNS = [
    "model", "seeds", "test_acc_mean", "test_acc_std", "test_acc_per_seed", "gap_to_best",
    "beyond_seed_spread", "params", "macs", "train_images_per_s", "wall_s",
]  # fmt: skip


@dataclass
class ModelSummary:
    """One model's trials, aggregated over seeds (a row of ``results.csv``)."""

    model: str
    trials: list[TrialResult]
    gap_to_best: float = 0.0
    beyond_seed_spread: str = ""  # "yes", "no", "best" or "n/a" (a single seed has no spread)

    @property
    def accuracies(self) -> list[float]:
        return [t.test_acc for t in self.trials if t.test_acc is not None]

    @property
    def mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (nan with a single seed: no spread)."""
        return mean_std(self.accuracies)[1]

    @property
    def images_per_s(self) -> float:
        return statistics.fmean(t.train_images_per_s for t in self.trials)

    @property
    def wall_s(self) -> float:
        return statistics.fmean(t.wall_s for t in self.trials)

    def row(self) -> dict[str, Any]:
        first = self.trials[0]
        return {
            "model": self.model,
            "seeds": len(self.trials),
            "test_acc_mean": f"{self.mean:.4f}",
            "test_acc_std": "" if math.isnan(self.std) else f"{self.std:.4f}",
            "test_acc_per_seed": ";".join(f"{a:.4f}" for a in self.accuracies),
            "gap_to_best": f"{self.gap_to_best:.4f}",
            "beyond_seed_spread": self.beyond_seed_spread,
            "params": first.params,
            "macs": first.macs,
            "train_images_per_s": f"{self.images_per_s:.1f}",
            "wall_s": f"{self.wall_s:.1f}",
        }


def compare(
    config: str | Path,
    models: Sequence[str],
    seeds: int = 3,
    out: str | Path = "compare",
    overrides: Mapping[str, Any] | None = None,
    model_overrides: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
) -> list[ModelSummary]:
    """Train several models over several seeds from one config; compare accuracy and cost.

    Args:
        config: the base training config (a YAML or shipped config name); its model.model is
            replaced by each name.
        models: registered model names (moderncnn models), each compared once.
        seeds: seeds per model: seed_everything 0, 1, ... seeds-1.
        out: output folder; trials go to ``out/runs/MODEL/seedK/``.
        overrides: dotted keys set for every model ({"trainer.max_epochs": 5}); on the
            command line any --KEY VALUE with a dotted key (--trainer.max_epochs 5).
        model_overrides: settings of one model only, after overrides: {model: {dotted key:
            value}}, or MODEL:KEY=VALUE words (resnet18_cifar:model.lr=0.05).

    The base config's ``model.model_kwargs`` belong to its own model: another model starts
    from ``{}`` unless its ``model_overrides`` set them. Returns the models best first.
    """
    if model_overrides is not None and not isinstance(model_overrides, Mapping):
        model_overrides = parse_model_overrides(model_overrides)
    base = read_config(config)
    plan = _plan(base, models, seeds, overrides or {}, model_overrides or {})
    out = Path(out)
    finished = {
        (name, seed): _finished_trial(base, settings, out, name, seed)
        for name, seed, settings in plan
    }
    # Every model's config is built once before the first trial trains: a value one of them
    # refuses (a --set for the third model) stops the compare now, not an hour in.
    checked: set[str] = set()
    for name, seed, settings in plan:
        if finished[(name, seed)] is None and name not in checked:
            check_trial_config(base, settings, f"--models {name}")
            checked.add(name)
    results: dict[str, list[TrialResult]] = {name: [] for name in models}
    for name, seed, settings in plan:
        folder = _trial_folder(out, name, seed)
        result = finished[(name, seed)]
        if result is None:
            if rank_zero_only.rank == 0:  # under DDP every process runs this loop
                shutil.rmtree(folder, ignore_errors=True)  # an unfinished trial starts again
            result = run_trial(base, settings, folder, name=name, seed=seed)
        results[name].append(result)
    summaries = summarize(results)
    if rank_zero_only.rank == 0:
        write_reports(summaries, out, config=Path(config), overrides=overrides or {})
    return summaries


def _trial_folder(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}"


def _finished_trial(
    base: dict[str, Any], settings: dict[str, Any], out: Path, name: str, seed: int
) -> TrialResult | None:
    """The trial's result when it has finished with this very config, None when unfinished.

    The whole config it ran (its ``trial.yaml``) is compared, not only this compare's
    settings: a base config edited since (``lr``, widths) is refused, never mixed in a row.
    """
    folder = _trial_folder(out, name, seed)
    result = read_result(folder)
    if result is None:
        return None
    hint = "give another --out, or delete that folder to rerun it"
    try:
        ran = yaml.safe_load((folder / TRIAL_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            f"{folder} holds a finished trial without its {TRIAL_CONFIG}, so which config it "
            f"was made from is unknown; {hint}"
        ) from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{folder / TRIAL_CONFIG} is not valid YAML; {hint}") from err
    expected = yaml.safe_load(yaml.safe_dump(trial_config(base, settings, folder, seed)))
    differences = config_differences(_without_logger(ran), _without_logger(expected))
    if differences:
        raise ConfigError(
            f"{folder} holds a finished trial made from another config "
            f"({describe_differences(differences)}); {hint}"
        )
    return result


def _without_logger(config: Any) -> Any:
    """The config without ``trainer.logger``, which only says where the trial folder was."""
    if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
        return config
    trainer = {k: v for k, v in config["trainer"].items() if k != "logger"}
    return {**config, "trainer": trainer}


def _plan(
    base: dict[str, Any],
    models: Sequence[str],
    seeds: int,
    overrides: Mapping[str, Any],
    model_overrides: Mapping[str, Mapping[str, Any]],
) -> list[tuple[str, int, dict[str, Any]]]:
    """(model, seed, settings) of every trial; refuses a bad request before any training."""
    if not models:
        raise ConfigError("--models: give at least one model name (`moderncnn models` lists them)")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    known = set(list_models())
    for name in models:
        if name not in known:
            raise ConfigError(f"--models: unknown model {name!r}; `moderncnn models` lists them")
    repeated = sorted({name for name in models if list(models).count(name) > 1})
    if repeated:
        raise ConfigError(f"--models: {', '.join(repeated)} given more than once")
    stray = sorted(set(model_overrides) - set(models))
    if stray:
        raise ConfigError(f"--set {stray[0]}:...: {stray[0]} is not one of --models")
    base_model = (base.get("model") or {}).get("model")
    plan = []
    for name in models:
        settings: dict[str, Any] = {"model.model": name}
        if name != base_model:
            settings["model.model_kwargs"] = {}
        settings.update(overrides)
        settings.update(model_overrides.get(name, {}))
        plan += [(name, seed, dict(settings)) for seed in range(seeds)]
    return plan


def summarize(results: Mapping[str, list[TrialResult]]) -> list[ModelSummary]:
    """Per-model summaries, best mean test accuracy first, each compared to the best.

    A gap is "beyond the seed spread" when the best model's and this model's one-std
    intervals do not overlap: gap > std_best + std_model.
    """
    summaries = sorted(
        (ModelSummary(name, trials) for name, trials in results.items() if trials),
        key=lambda s: -s.mean if not math.isnan(s.mean) else math.inf,
    )
    if not summaries:
        return []
    best = summaries[0]
    for summary in summaries:
        summary.gap_to_best = best.mean - summary.mean
        if summary is best:
            summary.beyond_seed_spread = "best"
        elif len(summary.accuracies) < 2 or len(best.accuracies) < 2:
            summary.beyond_seed_spread = "n/a"
        else:
            wider = summary.gap_to_best > best.std + summary.std
            summary.beyond_seed_spread = "yes" if wider else "no"
    return summaries


def write_reports(
    summaries: list[ModelSummary], out: Path, config: Path, overrides: Mapping[str, Any]
) -> None:
    """``results.csv``, ``results.md`` and the two figures, each written atomically."""

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(s.row() for s in summaries)

    atomic_write(out / "results.csv", write_csv)
    atomic_write_text(out / "results.md", markdown_table(summaries, config, overrides))
    with figures_not_shown():  # files of the comparison; the plot functions show them
        plot_accuracy_vs_macs(summaries, save=out / "accuracy_vs_macs.png")
        plot_val_curves(summaries, save=out / "curves.png")


def markdown_table(
    summaries: list[ModelSummary], config: Path, overrides: Mapping[str, Any]
) -> str:
    """The results as a Markdown table, with the budget they were measured at."""
    seeds = max((len(s.trials) for s in summaries), default=0)
    settings = ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none"
    lines = [
        f"Base config `{config}`, {seeds} seed(s) per model; overrides: {settings}.",
        "",
        "| model | test accuracy | gap to best | beyond seed spread | params | MACs "
        "| train images/s | wall time |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.model} | {format_mean_std(s.mean, s.std, percent)} | {s.gap_to_best:.2%} "
            f"| {s.beyond_seed_spread} | {_count(s.trials[0].params)} "
            f"| {_count(s.trials[0].macs)} | {s.images_per_s:.0f} | {s.wall_s:.0f} s |"
        )
    lines += [
        "",
        "Test accuracy: mean ± sample std over seeds, of each run's best-validation checkpoint. "
        "Beyond seed spread: the gap to the best exceeds the sum of the two stds. MACs: one "
        "image's forward pass. Wall time: per run (training, validation, test).",
    ]
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def plot_accuracy_vs_macs(
    summaries: Sequence[ModelSummary], save: str | Path | None = None
) -> Figure:
    """Test accuracy (mean ± std over seeds) against MACs per image, one point per model."""
    figure = new_figure(figsize=(6.4, 4.4))
    ax = figure.subplots()
    for s in summaries:
        macs = max(s.trials[0].macs, 1)
        spread = 0.0 if math.isnan(s.std) else s.std  # one seed: a point, no bar
        ax.errorbar(macs, s.mean, yerr=spread, fmt="o", capsize=4, label=s.model)
        ax.annotate(s.model, (macs, s.mean), textcoords="offset points", xytext=(6, 6))
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.2)  # room for the labels
    ax.set(xlabel="MACs per image (log scale)", ylabel="test accuracy")
    ax.grid(alpha=0.3, which="both")
    seeds = max((len(s.trials) for s in summaries), default=0)
    ax.set_title(f"accuracy vs cost ({seeds} seed(s); bars: ± 1 std)")
    return finish(figure, save)


def plot_val_curves(summaries: Sequence[ModelSummary], save: str | Path | None = None) -> Figure:
    """Every model's validation accuracy per epoch: the seeds' mean, and each seed thinly."""
    figure = new_figure(figsize=(6.4, 4.4))
    ax = figure.subplots()
    for index, s in enumerate(summaries):
        color = f"C{index % 10}"
        curves = [t.val_curve for t in s.trials if t.val_curve]
        for curve in curves:
            ax.plot(range(len(curve)), curve, color=color, alpha=0.3, linewidth=0.8)
        length = min((len(c) for c in curves), default=0)
        mean = [statistics.fmean(c[e] for c in curves) for e in range(length)]
        ax.plot(range(length), mean, "-o", color=color, markersize=3, label=s.model)
    ax.set(xlabel="epoch", ylabel="validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if summaries:
        ax.legend()
    ax.set_title("validation accuracy (thick: mean over seeds)")
    return finish(figure, save)


def parse_model_overrides(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["resnet18_cifar:model.lr=0.05"]`` -> ``{"resnet18_cifar": {"model.lr": 0.05}}``."""
    parsed: dict[str, dict[str, Any]] = {}
    for value in values:
        name, sep, assignment = value.partition(":")
        key, eq, text = assignment.partition("=")
        if not (sep and eq and name and key):
            raise ConfigError(
                f"model_overrides {value!r}: expected MODEL:KEY=VALUE, e.g. "
                "resnet18_cifar:model.lr=0.05"
            )
        parsed.setdefault(name, {})[key.removeprefix("--")] = yaml_value(
            text, f"model_overrides {value}"
        )
    return parsed


def show_comparison(summaries: list[ModelSummary], arguments: dict[str, Any]) -> int:
    """What ``moderncnn compare`` prints: the results table and the files written."""
    out = Path(arguments["out"])
    overrides = arguments.get("overrides") or {}
    print(markdown_table(summaries, Path(arguments["config"]), overrides))
    print(f"{len(summaries)} models: {out / 'results.csv'}, {out / 'results.md'}, "
          f"{out / 'accuracy_vs_macs.png'}, {out / 'curves.png'}")  # fmt: skip
    return 0
