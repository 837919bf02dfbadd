"""Training configs from Python: the model, data module and Trainer of ``moderncnn fit -c``.

    model, data, trainer = from_config("quickstart", **{"trainer.max_epochs": 1})
    trainer.fit(model, datamodule=data)

Also ``moderncnn preview -c CONFIG``, which draws one batch of a config's ``data:`` section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as L
import yaml
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch import LightningDataModule

import moderncnn.data  # noqa: F401  (lets a config name our data modules by class name)
from moderncnn.io.configs import find_config
from moderncnn.io.errors import ConfigError
from moderncnn.viz import show_batch

from .cli import build_cli
from .module import ImageClassifier
from .trainer import RunTrainer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["datamodule_from_config", "from_config", "preview", "show_preview"]


def from_config(
    path: str | Path, **overrides: Any
) -> tuple[ImageClassifier, LightningDataModule, L.Trainer]:
    """The model, data module and Trainer that ``moderncnn fit -c path`` builds, not yet run.

    Args:
        path: a training config: a YAML file, or the name of one that ships with moderncnn
            (``"quickstart"``; ``moderncnn configs`` lists them).
        **overrides: command-line keys without the dashes, dotted as there:
            ``**{"trainer.max_epochs": 1, "data.init_args.batch_size": 64}``; values are
            Python values (a dict or list for a nested setting).

    The Trainer has the CLI's loggers, checkpoints and report callbacks and checks its run
    folder before it starts, as ``moderncnn fit`` does; the seed (``seed_everything``) is
    set now. ``test_after_fit`` is the CLI's: call ``trainer.test(...)`` yourself.
    """
    config = find_config(path)
    argv = ["-c", str(config)]
    for key, value in overrides.items():
        argv.append(f"--{key.removeprefix('--')}={_cli_value(value)}")
    try:
        cli = build_cli(argv, run=False, trainer_class=RunTrainer)
    except ArgumentError as err:
        raise ConfigError(f"{config}: {err}") from err
    return cli.model, cli.datamodule, cli.trainer


def _cli_value(value: Any) -> str:
    """A Python value as the command line writes it (YAML, of which JSON is a part)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value)


def datamodule_from_config(config_path: str | Path) -> Any:
    """The data module of a training config's ``data:`` section, not yet set up."""
    path = find_config(config_path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(config, dict) or "data" not in config:
        raise ConfigError(f"{path}: no `data:` section (class_path and init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    parsed = parser.parse_object({"data": config["data"]})
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parsed).data


def preview(
    config: str,
    out: str | Path | None = "preview.png",
    n: int = 32,
    split: Literal["train", "val", "test"] = "train",
) -> Figure:
    """One batch of a training config's data as a grid: the quickest check of a data config.

    Args:
        config: training YAML (or shipped config name) with a data: section.
        out: PNG to write; None: only return the figure.
        n: number of images.
        split: train (augmented, as in training), val or test.
    """
    try:
        data = datamodule_from_config(config)
        return show_batch(data, n=n, split=split, save=out)
    except (ValueError, ArgumentError) as err:  # the data module's own checks of its arguments
        raise ConfigError(f"{config}: {' '.join(str(err).split())}") from err


def show_preview(figure: Figure, arguments: dict[str, Any]) -> int:
    """What ``moderncnn preview`` prints: the file written."""
    print(arguments["out"])
    return 0
