"""The command line of every sub-command, generated from the one Python function it runs.

A command is a typed, Google-style documented function (``moderncnn.predict``,
``moderncnn.features``, ...). Its parser is made here with jsonargparse, LightningCLI's engine:
each parameter becomes ``--name`` with its type, default and the docstring's line in
``--help``; a dataclass parameter becomes dotted flags (``--trainer.devices 2``); every command
takes ``--config ARGS.yaml`` (its arguments, as ``--print_config`` writes them) and
``--print_config``. Nothing else is added but parsing: the function does the work, and an
optional ``show`` prints what it returned.

Old spellings of flags (:data:`moderncnn.cli.DEPRECATED`) are rewritten to the new ones before
parsing, each with one warning line, so scripts keep working for one release.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

__all__ = ["Command", "apply_deprecated", "function_parser", "run_function"]


@dataclass(frozen=True)
class Command:
    """One row of the command table.

    Attributes:
        target: ``module:function`` run by the command.
        help: the one line ``moderncnn --help`` shows.
        kind: ``function``: the CLI is generated from the function's signature; ``argv``: the
            function takes the argument list itself (LightningCLI's commands).
        show: ``module:function`` printing the result (given the result and the arguments),
            returning the exit status; None: nothing is printed, status 0.
        positional: parameters given without a flag, in this order (inputs that are read).
        skip: parameters a command line cannot give (a module, a callable).
        defaults: the command line's own defaults where the function's would surprise there
            (explain writes its pictures to ./explain, where a notebook shows them).
        rename: (parameter, flag) pairs: a plotting function's ``save`` is ``--out``, the
            one name of an output on the command line.
    """

    target: str
    help: str
    kind: str = "function"
    show: str | None = None
    positional: tuple[str, ...] = ()
    skip: frozenset[str] = frozenset()
    defaults: tuple[tuple[str, Any], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()

    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(import_module(module), name)


def apply_deprecated(command: str, argv: Sequence[str], table: Mapping[str, Any]) -> list[str]:
    """``argv`` with each old spelling of ``table`` replaced, one warning line per old flag.

    ``table`` maps an old flag to the tokens that replace it (``"--checkpoint": ("--model",)``,
    ``"--bf16": ("--precision", "bf16")``) or to a callable ``(value) -> tokens`` for an old
    flag that takes a value whose new flag depends on it. The key ``"<positional>"`` names the
    flag that a leading bare value used to be given without.
    """
    out: list[str] = []
    warned: set[str] = set()

    def warn(old: str, new: Sequence[str]) -> None:
        if old not in warned:
            warned.add(old)
            print(
                f"moderncnn {command}: warning: {old} is deprecated; use {' '.join(new)}",
                file=sys.stderr,
            )

    args = list(argv)
    if "<positional>" in table and args and not args[0].startswith("-"):
        new = table["<positional>"]
        flag = new(args[0]) if callable(new) else new
        warn(f"the positional {args[0]!r}", [*flag, args[0]])
        args = [*flag, *args]
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        new = table.get(flag) if flag.startswith("-") else None
        if new is None:
            out.append(arg)
        elif callable(new):
            if not eq and i + 1 < len(args):
                i += 1
                value = args[i]
            tokens = new(value)
            if tokens[:1] != (flag,):
                warn(flag, tokens[:1])
            # FLAG=VALUE keeps the value bound to its flag (one that starts with '-', or empty)
            out += [*tokens[:-1], f"{tokens[-1]}={value}"] if eq else [*tokens, value]
        else:
            warn(flag, new)
            out += [*new[:-1], f"{new[-1]}={value}"] if eq else list(new)
        i += 1
    return out


def hyphen_spellings(func: Callable[..., Any], prefix: Iterable[str] = ()) -> dict[str, tuple]:
    """``--batch-size`` -> ``--batch_size`` for every parameter whose name has an underscore:
    the flags of the hand-written parsers, before the names became jsonargparse's."""
    names = [*prefix, *inspect.signature(func).parameters]
    return {f"--{n.replace('_', '-')}": (f"--{n}",) for n in names if "_" in n}


def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """``func``'s signature with its parameters' annotations evaluated (its return annotation
    may name a type imported only for type checkers, such as matplotlib's Figure)."""
    signature = inspect.signature(func)
    # typing resolves the parameters' string annotations in the function's module (the return
    # annotation is left out: it may name a type that module imports for type checkers only).
    stub = SimpleNamespace(
        __annotations__={n: p.annotation for n, p in signature.parameters.items()
                         if p.annotation is not inspect.Parameter.empty}
    )  # fmt: skip
    hints = get_type_hints(stub, globalns=getattr(func, "__globals__", {}))
    params = [p.replace(annotation=hints.get(n, p.annotation))
              for n, p in signature.parameters.items()]  # fmt: skip
    return signature.replace(parameters=params, return_annotation=inspect.Signature.empty)


def _doc_lines(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    from docstring_parser import parse

    doc = parse(inspect.getdoc(func) or "")
    params = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
    text = "\n\n".join(t for t in (doc.short_description, doc.long_description) if t)
    return text, params


def _is_sequence(annotation: Any) -> bool:
    """``list[str]``, ``Sequence[str | Path]``, ``str | Sequence[str]``: several values."""
    origin = get_origin(annotation)
    if origin in (list, tuple, Sequence, Iterable):
        return True
    if origin in (Union, UnionType):
        return any(_is_sequence(a) for a in get_args(annotation))
    return False


def _element_type(annotation: Any) -> type:
    """The type of one value of a sequence parameter: int, float, else str."""
    for arg in get_args(annotation):
        if get_origin(arg) is not None:
            return _element_type(arg)
        if arg in (int, float):
            return arg
    return str


def _type_name(annotation: Any) -> str:
    text = str(annotation)
    for module in ("typing.", "pathlib.", "collections.abc."):
        text = text.replace(module, "")
    return text


def function_parser(name: str, command: Command, func: Callable[..., Any] | None = None):
    """The jsonargparse parser of ``moderncnn NAME``, generated from the command's function."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    func = func or command.function()
    description, docs = _doc_lines(func)
    parser = ArgumentParser(
        prog=f"moderncnn {name}", description=description, exit_on_error=False,
        default_env=False, parser_mode="yaml",
    )  # fmt: skip
    signature = _signature(func)
    manual = set(command.positional)
    for key, param in signature.parameters.items():
        if key in command.skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if _is_sequence(param.annotation) and not _is_dataclass_type(param.annotation):
            manual.add(key)
    takes_config = "config" in signature.parameters
    # A command whose function reads a training config takes it as -c/--config (as `fit`);
    # its own arguments' file is then --args (and --config ARGS.yaml is recognised: see run).
    config_flags = ["--args"] if takes_config else ["-c", "--config", "--args"]
    parser.add_argument(
        *config_flags, action=ActionConfigFile, metavar="ARGS.yaml",
        help="a YAML file of this command's arguments (as --print_config writes them)",
    )  # fmt: skip
    skip = set(command.skip) | manual
    for key in command.positional:
        _add_manual(parser, key, signature.parameters[key], docs.get(key, ""), positional=True)
    for key, param in signature.parameters.items():
        if key in manual and key not in command.positional:
            _add_manual(parser, key, param, docs.get(key, ""), positional=False)
    if takes_config:
        param = signature.parameters["config"]
        skip.add("config")
        parser.add_argument(
            "--config", "-c", type=str, required=param.default is param.empty,
            default=None if param.default is param.empty else param.default,
            help=docs.get("config", ""),
        )  # fmt: skip
    for key, flag in command.rename:
        param = signature.parameters[key]
        skip.add(key)
        default = dict(command.defaults).get(key, param.default)
        parser.add_argument(
            f"--{flag}", type=param.annotation, default=default, help=docs.get(key, "")
        )
    parser.add_function_arguments(func, as_group=False, skip=skip, fail_untyped=False)
    if command.defaults:
        renamed = dict(command.rename)
        parser.set_defaults({renamed.get(k, k): v for k, v in dict(command.defaults).items()})
    return parser


def _is_dataclass_type(annotation: Any) -> bool:
    import dataclasses

    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _add_manual(parser: Any, key: str, param: inspect.Parameter, doc: str, positional: bool):
    """A parameter of several values (``nargs="+"``: ``--models a b``) or a positional one."""
    several = _is_sequence(param.annotation)
    required = param.default is param.empty
    default = None if required else param.default
    shown = f"type: {_type_name(param.annotation)}" + (
        "" if required else f", default: {default!r}"
    )
    help_ = f"{doc} ({shown})" if doc else f"({shown})"
    kind = _element_type(param.annotation) if several else str
    if kind is not str:  # jsonargparse adds its own "(type: ...)" when given a type
        help_ = doc
    extra_type = {} if kind is str else {"type": kind}
    if positional:
        nargs = "+" if several and required else "*" if several else None if required else "?"
        extra = {} if required else {"default": default}
        parser.add_argument(key, nargs=nargs, help=help_, **extra, **extra_type)
    else:
        repeat = {"nargs": "+", "action": "extend"} if several else {}  # --x a b --x c
        parser.add_argument(
            f"--{key}", default=default, required=required, help=help_, **repeat, **extra_type
        )


BOOL_TEXT = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _bare_bools(argv: list[str], func: Callable[..., Any]) -> list[str]:
    """``--force`` alone means ``--force true`` (as the hand-written parsers' switches did)."""
    switches = {
        f"--{name}"
        for name, param in _signature(func).parameters.items()
        if param.annotation is bool
    }
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg in switches and following not in BOOL_TEXT:
            out.append("true")
    return out


def _is_args_file(path: str, func: Callable[..., Any], flags: Iterable[str] = ()) -> bool:
    """Whether ``path`` is a YAML of ``func``'s arguments (as ``--print_config`` writes), not a
    training config: its keys all name parameters, and its ``model``/``data`` (if any) are not
    sections (a training config's ``model:``/``data:`` are mappings: class and arguments)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        return False
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return False
    if not isinstance(data, dict) or not data:
        return False
    sections = any(isinstance(data.get(key), dict) for key in ("model", "data"))
    names = {*inspect.signature(func).parameters, *flags}
    return not sections and set(map(str, data)) <= names


def _split_config(argv: list[str], func: Callable[..., Any], flags: Iterable[str]) -> list[str]:
    """For a function with a training ``config``: ``-c ARGS.yaml`` -> ``--args ARGS.yaml``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in ("-c", "--config"):
            if not eq and i + 1 < len(argv):
                i += 1
                value = argv[i]
            out += ["--args" if _is_args_file(value, func, flags) else "--config", value]
        else:
            out.append(arg)
        i += 1
    return out


def _collect_overrides(argv: list[str], func: Callable[..., Any]) -> list[str]:
    """Dotted training-config keys (``--trainer.max_epochs 3``, ``--model.lr=0.1``) gathered into
    the function's ``overrides`` mapping (``--overrides '{...}'``), read as YAML values."""
    import json

    import yaml

    params = set(inspect.signature(func).parameters)
    out: list[str] = []
    found: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, text = arg[2:].partition("=")
        if arg.startswith("--") and "." in key and key.split(".")[0] not in params:
            if not eq:
                if i + 1 >= len(argv):
                    raise argparse.ArgumentError(None, f"{arg}: no value follows it")
                i += 1
                text = argv[i]
            try:
                found[key] = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise argparse.ArgumentError(
                    None, f"--{key}: {text!r} is not a YAML value"
                ) from err
        else:
            out.append(arg)
        i += 1
    if found:
        out += ["--overrides", json.dumps(found)]
    return out


def _one_line_warning(command: str, message: Warning | str, *args: Any, **kwargs: Any) -> None:
    text = " ".join(str(message).split())
    print(f"moderncnn {command}: warning: {text}", file=sys.stderr)


def run_function(name: str, command: Command, argv: Sequence[str], deprecated: Mapping) -> int:
    """Parse ``argv`` for the command's function, call it, show what it returned."""
    func = command.function()
    table = {**hyphen_spellings(func), **deprecated}
    args = apply_deprecated(name, argv, table)
    signature = inspect.signature(func)
    if "config" in signature.parameters:
        args = _split_config(args, func, [flag for _, flag in command.rename])
    if "overrides" in signature.parameters:
        args = _collect_overrides(args, func)
    args = _bare_bools(args, func)
    parser = function_parser(name, command, func)
    parsed = parser.parse_args(args)
    init = parser.instantiate(parsed)
    for key, flag in command.rename:
        init[key] = init.pop(flag)
    kwargs = {k: init[k] for k in signature.parameters if k in init and k not in command.skip}
    positional = [
        kwargs.pop(k)
        for k, p in signature.parameters.items()
        if p.kind is p.POSITIONAL_ONLY and k in kwargs
    ]
    with warnings.catch_warnings():  # each warning the run raises: one line, as errors are
        warnings.showwarning = partial(_one_line_warning, name)
        result = func(*positional, **kwargs)
    if command.show is None:
        return 0
    module, show = command.show.split(":")
    return getattr(import_module(module), show)(result, kwargs) or 0
