"""The ``moderncnn`` command: one sub-command per job, each living beside the code it drives.

Every sub-command goes through one wrapper with one exit-code scheme: 0 done; 2 the command
line or config does not parse; 1 a mistake the user can fix (a
:class:`~moderncnn.io.errors.ModernCNNError` or an operating-system error such as a full
disk), printed as ``moderncnn CMD: error: ...`` in one line. Anything else is a programming
error and keeps its traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

from moderncnn.io.command_line import CommandParser
from moderncnn.io.configs import CONFIG_ROOT, config_description, list_configs
from moderncnn.io.errors import ModernCNNError

# sub-command -> (module, function taking argv, one-line help). Imported only when used.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("moderncnn.cli", "list_models_main", "list the registered model names"),
    "configs": ("moderncnn.cli", "list_configs_main", "list the shipped configs: fit -c NAME"),
    "summary": ("moderncnn.viz.diagram", "summary_main", "layer table; --diagram PNG: picture"),
    "fit": ("moderncnn.training.cli", "main", "train from a YAML config; --seeds N: N runs"),
    "lr-find": ("moderncnn.training.lr_find", "main", "learning-rate range test: PNG + value"),
    "validate": ("moderncnn.training.cli", "main", "validate a checkpoint"),
    "test": ("moderncnn.training.cli", "main", "test a checkpoint; writes a confusion matrix"),
    "predict": ("moderncnn.training.cli", "main", "-c CONFIG, or --checkpoint CKPT FILES: top-k"),
    "features": ("moderncnn.transfer.features", "main", "cache a frozen backbone's features"),
    "probe": ("moderncnn.transfer.probe", "main", "train a linear probe on cached features"),
    "pack": ("moderncnn.data.packed", "main", "image folder -> litdata chunks to stream from"),
    "export": ("moderncnn.cli", "export_main", "ONNX, TorchScript or safetensors, checked"),
    "explain": ("moderncnn.viz.gradcam", "main", "Grad-CAM: where the network looked, a PNG each"),
    "report": ("moderncnn.training.run_report", "main", "one self-contained HTML page of a run"),
    "plot": ("moderncnn.viz.curves", "plot_main", "learning curves PNG of a run"),
    "preview": ("moderncnn.training.config", "preview_main", "grid of one augmented batch"),
    "compare": ("moderncnn.training.compare", "main", "several models x seeds: accuracy and cost"),
    "tune": ("moderncnn.training.tune", "main", "hyperparameter search with Optuna"),
}


def list_models_main(argv: list[str]) -> int:
    """``moderncnn models [PATTERN]``: the registered model names matching a glob pattern."""
    parser = CommandParser(prog="moderncnn models", description=list_models_main.__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet*'")
    pattern = parser.parse_args(argv).pattern
    from moderncnn.models import list_models  # torch: loaded by the commands that use it

    print("\n".join(list_models(pattern)))
    return 0


def list_configs_main(argv: list[str]) -> int:
    """``moderncnn configs``: the configs that ship with moderncnn, each with what it trains."""
    if argv:
        print(f"moderncnn configs: takes no arguments, got {argv[0]!r}", file=sys.stderr)
        return 2
    names = list_configs()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {config_description(name)}")
    print(f"\nmoderncnn fit -c NAME, or from_config(NAME); the files: {CONFIG_ROOT}")
    return 0


def export_main(argv: list[str]) -> int:
    """``moderncnn export``, given the reader of training configs that ``--calibrate`` needs."""
    # Imported when used, like every command: `moderncnn models` need not load torch.
    from moderncnn.inference.export_cli import main
    from moderncnn.training.config import datamodule_from_config

    return main(argv, read_config=datamodule_from_config)


def _usage() -> str:
    lines = ["usage: moderncnn COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"moderncnn: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[command]
    if command == "predict" and any(a.split("=")[0] == "--checkpoint" for a in rest):
        # `predict --checkpoint ... FILES` classifies image files; `predict -c` is LightningCLI's.
        module, function = "moderncnn.inference.prediction", "main"
    # LightningCLI reads the sub-command itself, so it gets argv whole.
    args = argv if module == "moderncnn.training.cli" else rest
    try:
        return getattr(import_module(module), function)(args) or 0
    except SystemExit as exit_:  # argparse: --help (0) or a command line that does not parse (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    except (ModernCNNError, OSError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"moderncnn {command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
