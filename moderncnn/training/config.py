"""Training configs from Python: the model, data module and Trainer of ``moderncnn fit -c``.

    model, data, trainer = from_config("quickstart", **{"trainer.max_epochs": 1})
    trainer.fit(model, datamodule=data)

Also ``moderncnn preview -c CONFIG``, which draws one batch of a config's ``data:`` section.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import yaml
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch import LightningDataModule

import moderncnn.data  # noqa: F401  (lets a config name our data modules by class name)
from moderncnn.io.command_line import CommandParser
from moderncnn.io.configs import find_config
from moderncnn.io.errors import ConfigError, ModernCNNError
from moderncnn.viz import show_batch

from .cli import build_cli
from .module import ImageClassifier
from .trainer import RunTrainer

__all__ = ["datamodule_from_config", "from_config", "preview_main"]


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


def preview_main(argv: list[str]) -> int:
    """``moderncnn preview -c CONFIG [-o PNG] [-n N]``: one batch of the config's data."""
    parser = CommandParser(prog="moderncnn preview", description=preview_main.__doc__)
    parser.add_argument("-c", "--config", required=True, help="training YAML with a data: section")
    parser.add_argument("-o", "--output", default="preview.png", help="PNG to write")
    parser.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    args = parser.parse_args(argv)
    try:
        data = datamodule_from_config(args.config)
        show_batch(data, n=args.n, split=args.split, save=args.output)
    except (ModernCNNError, FileNotFoundError, ValueError, ArgumentError) as err:
        print(f"moderncnn preview: error: {err}", file=sys.stderr)
        return 1
    print(args.output)
    return 0
