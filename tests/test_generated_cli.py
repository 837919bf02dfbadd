# ruff: noqa: E501  (the table of old and new spellings reads best one case a line)
"""The CLI generated from the commands' functions, tested from the command table.

Every `function` command of :data:`moderncnn.cli.COMMANDS`: its ``--help`` lists each parameter
with its docstring line; it takes ``--config ARGS.yaml`` and ``--print_config`` (and the one
reads back what the other wrote); every old spelling of :data:`moderncnn.cli.DEPRECATED` does
what the new one does, with one warning line naming it; ``predict`` is one command for an
artifact and for a training config; ``moderncnn completion`` names every command.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from moderncnn.cli import COMMANDS, DEPRECATED, main
from moderncnn.io.command_line import _doc_lines, _is_sequence, _signature

GENERATED = [name for name, command in COMMANDS.items() if command.kind == "function"]


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    command = COMMANDS[name]
    return {
        key: param
        for key, param in _signature(command.function()).parameters.items()
        if key not in command.skip and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def _example(annotation: Any) -> Any:
    """A value of ``annotation`` that parses: a choice of a Literal, a list for a sequence."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)[0]
    if _is_sequence(annotation):
        return ["x.png"]
    if annotation is int or int in get_args(annotation) and str not in get_args(annotation):
        return 1
    return "x"


def _required_args(name: str) -> dict[str, Any]:
    """The command's required arguments, each with a value that parses."""
    values = {
        k: _example(p.annotation) for k, p in _parameters(name).items() if p.default is p.empty
    }
    return {"config" if k == "config" else k: ("quickstart" if k == "config" else v)
            for k, v in values.items()}  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generated_commands_are_most_of_the_table() -> None:
    lightning = {n for n, c in COMMANDS.items() if c.kind == "lightning"}
    assert set(COMMANDS) == set(GENERATED) | lightning
    assert lightning == {"fit", "validate", "test"}


@pytest.mark.parametrize("name", GENERATED)
def test_help_lists_every_parameter_with_its_docstring_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run([name, "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    command = COMMANDS[name]
    _, docs = _doc_lines(command.function())
    renamed = dict(command.rename)
    for key in _parameters(name):
        flag = key if key in command.positional else f"--{renamed.get(key, key)}"
        assert flag in flat, f"{name}: {flag} not in --help"
        assert docs.get(key), f"{name}: parameter {key} has no docstring line"
        assert " ".join(docs[key].split())[:40] in flat, f"{name}: the doc of {key}"
    assert "--config" in flat and "--print_config" in flat


@pytest.mark.parametrize("name", GENERATED)
def test_every_command_reads_its_arguments_from_a_yaml_and_prints_them(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _required_args(name)
    file = tmp_path / "args.yaml"
    file.write_text(yaml.safe_dump(args) if args else "{}\n")
    code, out, err = _run([name, "--config", str(file), "--print_config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out) or {}
    for key, value in args.items():
        assert printed.get(key) == value, f"{name}: {key}: {printed.get(key)!r} != {value!r}"
    # What --print_config wrote is an arguments file: read back, it prints the same.
    again = tmp_path / "printed.yaml"
    again.write_text(out)
    code, out_again, err = _run([name, "--config", str(again), "--print_config"], capsys)
    assert code == 0 and yaml.safe_load(out_again) == printed, err


def test_a_broken_arguments_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "args.yaml"
    file.write_text("topk: [1\nmodel: x\n")
    code, _, err = _run(["predict", "--config", str(file), "x.png"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# (command, old argv, new argv): every old spelling of DEPRECATED, and the one it became.
OLD_AND_NEW = [
    ("predict", ["--checkpoint", "m.ckpt", "a.png"], ["--model", "m.ckpt", "a.png"]),
    ("predict", ["--model", "m", "a.png", "--csv", "o.csv"], ["--model", "m", "a.png", "--out", "o.csv"]),
    ("predict", ["--model", "m", "a.png", "--json", "o.json"], ["--model", "m", "a.png", "--out", "o.json"]),
    ("features", ["--out", "c", "--data", "d", "--backbone", "resnet18"], ["--out", "c", "--data", "d", "--arch", "resnet18"]),
    ("features", ["--out", "c", "--data", "d", "--weights", "imagenet"], ["--out", "c", "--data", "d", "--model", "imagenet"]),
    ("features", ["--out", "c", "--data", "d", "--bf16"], ["--out", "c", "--data", "d", "--precision", "bf16"]),
    ("features", ["--out", "c", "--data", "d", "--half"], ["--out", "c", "--data", "d", "--precision", "fp16"]),
    ("export", ["m.ckpt", "--format", "onnx"], ["--model", "m.ckpt", "--format", "onnx"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "--model", "resnet18"], ["--model", "m.ckpt", "--format", "onnx", "--arch", "resnet18"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "-o", "x.onnx"], ["--model", "m.ckpt", "--format", "onnx", "--out", "x.onnx"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "--output", "x.onnx"], ["--model", "m.ckpt", "--format", "onnx", "--out", "x.onnx"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "--int8"], ["--model", "m.ckpt", "--format", "onnx", "--precision", "int8"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "--no-optimize"], ["--model", "m.ckpt", "--format", "onnx", "--optimize", "false"]),
    ("export", ["--model", "m.ckpt", "--format", "onnx", "--dynamic-batch"], ["--model", "m.ckpt", "--format", "onnx", "--dynamic_batch"]),
    ("summary", ["resnet18"], ["--arch", "resnet18"]),
    ("summary", ["--arch", "resnet18", "--diagram", "d.png"], ["--arch", "resnet18", "--out", "d.png"]),
    ("explain", ["--checkpoint", "m.ckpt", "a.png"], ["--model", "m.ckpt", "a.png"]),
    ("explain", ["--model", "m", "a.png", "--class", "cat"], ["--model", "m", "a.png", "--target", "cat"]),
    ("plot", ["run", "-o", "c.png"], ["run", "--out", "c.png"]),
    ("plot", ["run", "--output", "c.png"], ["run", "--out", "c.png"]),
    ("report", ["run", "-o", "r.html"], ["run", "--out", "r.html"]),
    ("preview", ["-c", "quickstart", "-o", "p.png"], ["-c", "quickstart", "--out", "p.png"]),
    ("preview", ["-c", "quickstart", "--output", "p.png"], ["-c", "quickstart", "--out", "p.png"]),
    ("preview", ["-c", "quickstart", "-n", "4"], ["-c", "quickstart", "--n", "4"]),
    ("lr-find", ["-c", "quickstart", "-o", "l.png"], ["-c", "quickstart", "--out", "l.png"]),
    ("lr-find", ["-c", "quickstart", "--output", "l.png"], ["-c", "quickstart", "--out", "l.png"]),
    ("compare", ["-c", "quickstart", "--models", "a", "--set", "a:model.lr=1"], ["-c", "quickstart", "--models", "a", "--model_overrides", "a:model.lr=1"]),
    ("tune", ["-c", "quickstart", "--space", "s", "--trials", "1", "--study", "x"], ["-c", "quickstart", "--space", "s", "--trials", "1", "--study_name", "x"]),
    ("tune", ["-c", "quickstart", "--space", "s", "--trials", "1", "--startup-trials", "2"], ["-c", "quickstart", "--space", "s", "--trials", "1", "--startup_trials", "2"]),
    # the old `--KEY=VALUE` overrides of lr-find: the same dotted keys as every command's
    ("lr-find", ["-c", "quickstart", "--trainer.max_epochs=2"], ["-c", "quickstart", "--trainer.max_epochs", "2"]),
]  # fmt: skip


def test_every_deprecated_spelling_has_a_case() -> None:
    covered = set()
    for name, old, _ in OLD_AND_NEW:
        covered |= {(name, a) for a in old if a in DEPRECATED.get(name, {})}
        if "<positional>" in DEPRECATED.get(name, {}) and not old[0].startswith("-"):
            covered.add((name, "<positional>"))
    assert covered == {(name, old) for name, table in DEPRECATED.items() for old in table}


@pytest.mark.parametrize(("name", "old", "new"), OLD_AND_NEW)
def test_an_old_spelling_does_the_same_with_one_warning_line(
    name: str, old: list[str], new: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, expected, err = _run([name, *new, "--print_config"], capsys)
    assert code == 0 and "warning" not in err, err
    code, printed, err = _run([name, *old, "--print_config"], capsys)
    assert code == 0 and printed == expected
    lines = err.strip().splitlines()
    if "--trainer.max_epochs=2" in old:  # one syntax, not a deprecation: no warning
        assert lines == [], err
        return
    assert len(lines) == 1, err
    assert lines[0].startswith(f"moderncnn {name}: warning: ") and "is deprecated; use " in err
    assert next(a for a in new if a not in old) in lines[0].split("; use ")[1], err


def test_predict_is_one_command_for_an_artifact_and_for_a_config(
    tmp_path: Path, cifar_samples_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_export import tiny_checkpoint

    # An artifact: the files are classified, and --out's extension picks the format.
    ckpt = tiny_checkpoint(tmp_path / "run.ckpt", in_chans=3)
    images = sorted(cifar_samples_dir.glob("*.png"))[:2]
    out = tmp_path / "p.json"
    argv = ["predict", "--model", str(ckpt), *map(str, images), "--topk", "2", "--out", str(out)]
    code, printed, err = _run(argv, capsys)
    assert code == 0, err
    assert "2 images classified" in printed and out.read_text().lstrip().startswith("[")
    # A training config without --model: Lightning's predict, given the same argument list.
    seen: list[list[str]] = []
    monkeypatch.setattr("moderncnn.training.cli.main", lambda argv: seen.append(argv) or 0)
    config = tmp_path / "fit.yaml"
    config.write_text("model:\n  model: resnet18_cifar\ndata:\n  class_path: X\n")
    assert main(["predict", "-c", str(config), "--ckpt_path", "last"]) == 0
    assert seen == [["predict", "-c", str(config), "--ckpt_path", "last"]]
    assert main(["predict", "-c", "quickstart"]) == 0 and len(seen) == 2
    # An arguments file (model: a path) is the artifact's command, not Lightning's.
    args = tmp_path / "args.yaml"
    args.write_text(yaml.safe_dump({"model": str(ckpt), "inputs": [str(images[0])]}))
    assert main(["predict", "--config", str(args)]) == 0 and len(seen) == 2


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_every_command(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, script, _ = _run(["completion", shell], capsys)
    assert code == 0 and "moderncnn" in script
    for name in COMMANDS:
        assert name in script, name
    assert "--precision" in script  # the flags of the commands, too
    assert main(["completion", "fish-and-chips"]) == 2


def test_typing_of_examples_is_sane() -> None:
    assert _example(typing.Literal["onnx", "x"]) == "onnx" and _example(list[str]) == ["x.png"]
