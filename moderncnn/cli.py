"""The ``moderncnn`` command: one sub-command per job, each living beside the code it drives.

Every sub-command goes through one wrapper with one exit-code scheme: 0 done; 2 the command
line or config does not parse; 1 a mistake the user can fix (a
:class:`~moderncnn.io.errors.ModernCNNError` or an operating-system error such as a full
disk), printed as ``moderncnn CMD: error: ...`` in one line. Anything else is a programming
error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Any

from moderncnn.io.command_line import Command, apply_deprecated, run_function
from moderncnn.io.configs import CONFIG_ROOT, config_description
from moderncnn.io.errors import ModernCNNError

LIGHTNING = "moderncnn.training.cli:main"  # LightningCLI: fit, validate, test, predict -c

# sub-command -> what it runs and its one-line help. Imported only when used. A `function`
# command's CLI is generated from its function's signature (moderncnn/io/command_line.py);
# `argv` and `lightning` commands parse their own argument list.
COMMANDS: dict[str, Command] = {
    "models": Command(
        "moderncnn.models:list_models",
        "list the registered model names",
        show="moderncnn.cli:show_names",
        positional=("pattern",),
    ),
    "configs": Command(
        "moderncnn.io.configs:list_configs",
        "list the shipped configs: fit -c NAME",
        show="moderncnn.cli:show_configs",
    ),
    "summary": Command(
        "moderncnn.viz.diagram:summary",
        "layer table of --arch NAME or --model ARTIFACT; --out PNG: diagram",
        show="moderncnn.viz.diagram:show_summary",
    ),
    "fit": Command(LIGHTNING, "train from a YAML config; --seeds N: N runs", "lightning"),
    "lr-find": Command(
        "moderncnn.training.lr_find:lr_find",
        "learning-rate range test: PNG + value",
        show="moderncnn.training.lr_find:show_lr_find",
        rename=(("plot", "out"),),
    ),
    "validate": Command(LIGHTNING, "validate a checkpoint", "lightning"),
    "test": Command(LIGHTNING, "test a checkpoint; writes a confusion matrix", "lightning"),
    "predict": Command(
        "moderncnn.inference.prediction:predict",
        "--model ARTIFACT FILES: top-k classes; -c CONFIG: Lightning's predict",
        show="moderncnn.inference.prediction:show_predictions",
        positional=("inputs",),
        skip=frozenset({"backbone", "transform", "parts"}),
    ),
    "features": Command(
        "moderncnn.transfer.features:features",
        "cache a frozen backbone's features",
        show="moderncnn.transfer.features:show_features",
    ),
    "probe": Command(
        "moderncnn.transfer.probe:probe",
        "train a linear probe on cached features",
        show="moderncnn.transfer.probe:show_probe",
        positional=("cache",),
    ),
    "pack": Command(
        "moderncnn.data.packed:pack_image_folder",
        "image folder -> litdata chunks to stream from",
        show="moderncnn.data.packed:show_pack",
        positional=("folder",),
    ),
    "export": Command(
        "moderncnn.training.export_command:export",
        "ONNX, TorchScript or safetensors, checked",
        show="moderncnn.training.export_command:show_export",
    ),
    "explain": Command(
        "moderncnn.viz.gradcam:explain",
        "Grad-CAM: where the network looked, a PNG each",
        show="moderncnn.viz.gradcam:show_explanations",
        positional=("images",),
        defaults=(("out", "explain"),),
    ),
    "report": Command(
        "moderncnn.training.run_report:write_report",
        "one self-contained HTML page of a run",
        show="moderncnn.training.run_report:show_report",
        positional=("run",),
    ),
    "plot": Command(
        "moderncnn.viz.curves:plot_curves",
        "learning curves PNG of a run",
        show="moderncnn.viz.curves:show_curves",
        positional=("run",),
        defaults=(("save", True),),
        rename=(("save", "out"),),
        skip=frozenset({"title"}),
    ),
    "preview": Command(
        "moderncnn.training.config:preview",
        "grid of one augmented batch",
        show="moderncnn.training.config:show_preview",
    ),
    "compare": Command(
        "moderncnn.training.compare:compare",
        "several models x seeds: accuracy and cost",
        show="moderncnn.training.compare:show_comparison",
    ),
    "tune": Command(
        "moderncnn.training.tune:tune",
        "hyperparameter search with Optuna",
        show="moderncnn.training.tune:show_study",
    ),
}


def _export_model_flag(value: str) -> tuple[str, ...]:
    """export's old ``--model NAME`` was an architecture: ``--arch`` now, ``--model`` the file."""
    from pathlib import Path

    if Path(value).exists() or "." in Path(value).name or value.startswith("hf_hub:"):
        return ("--model",)
    from moderncnn.models import list_models  # torch: only for this old spelling

    return ("--arch",) if value in list_models() else ("--model",)


# Old spellings, kept for one release: command -> {old flag: the tokens that replace it, or a
# function of its value giving them}; "<positional>": the flag a leading bare value now needs.
# Each prints one warning line naming the new spelling (io/command_line.apply_deprecated).
DEPRECATED: dict[str, dict[str, Any]] = {
    "predict": {"--checkpoint": ("--model",), "--csv": ("--out",), "--json": ("--out",)},
    "features": {
        "--backbone": ("--arch",),
        "--weights": ("--model",),
        "--bf16": ("--precision", "bf16"),
        "--half": ("--precision", "fp16"),
    },
    "summary": {"<positional>": ("--arch",), "--diagram": ("--out",)},
    "plot": {"-o": ("--out",), "--output": ("--out",)},
    "lr-find": {"-o": ("--out",), "--output": ("--out",)},
    "compare": {"--set": ("--model_overrides",)},
    "tune": {"--study": ("--study_name",)},
    "report": {"-o": ("--out",)},
    "preview": {"-o": ("--out",), "--output": ("--out",), "-n": ("--n",)},
    "explain": {"--checkpoint": ("--model",), "--class": ("--target",)},
    "export": {
        "<positional>": ("--model",),
        "--model": _export_model_flag,
        "-o": ("--out",),
        "--output": ("--out",),
        "--int8": ("--precision", "int8"),
        "--no-optimize": ("--optimize", "false"),
    },
}


def show_names(names: list[str], arguments: dict[str, Any]) -> int:
    """What ``moderncnn models`` prints: one name a line."""
    print("\n".join(names))
    return 0


def show_configs(names: list[str], arguments: dict[str, Any]) -> int:
    """What ``moderncnn configs`` prints: each shipped config with what it trains."""
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {config_description(name)}")
    print(f"\nmoderncnn fit -c NAME, or from_config(NAME); the files: {CONFIG_ROOT}")
    return 0


def _usage() -> str:
    lines = ["usage: moderncnn COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "moderncnn COMMAND --help: its arguments; moderncnn completion bash|zsh|tcsh: "
              "a shell completion script"]  # fmt: skip
    return "\n".join(lines)


def _predict_runs_lightning(argv: list[str]) -> bool:
    """``predict`` is one command: with ``--model ARTIFACT`` it classifies files; without
    it, a training config (``-c``) runs Lightning's predict over the config's data. An
    arguments file (``--config ARGS.yaml`` holding ``model:`` as a path) is the former."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("-c", "--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    if known.model is not None or not known.config:
        return False
    from moderncnn.io.command_line import _is_args_file

    function = COMMANDS["predict"].function()
    return not all(_is_args_file(path, function) for path in known.config)


def _run(command: str, argv: list[str]) -> int:
    entry = COMMANDS[command]
    deprecated = DEPRECATED.get(command, {})
    if command == "predict":
        rest = apply_deprecated(command, argv[1:], deprecated)
        if _predict_runs_lightning(rest):
            return import_module("moderncnn.training.cli").main(["predict", *rest])
        return run_function(command, entry, rest, {})
    if entry.kind == "function":
        return run_function(command, entry, argv[1:], deprecated)
    function = entry.function()
    # LightningCLI reads the sub-command itself, so it gets argv whole.
    return function(argv if entry.kind == "lightning" else argv[1:]) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    command = argv[0]
    if command == "completion":
        from moderncnn.completion import completion_main

        return completion_main(argv[1:])
    if command not in COMMANDS:
        print(f"moderncnn: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return _run(command, argv)
    except SystemExit as exit_:  # argparse: --help (0) or a command line that does not parse (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    except argparse.ArgumentError as err:  # a generated parser: does not parse, in one line
        message = " ".join(str(err).split())
        print(f"moderncnn {command}: error: {message} (see `moderncnn {command} --help`)",
              file=sys.stderr)  # fmt: skip
        return 2
    except (ModernCNNError, OSError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"moderncnn {command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
