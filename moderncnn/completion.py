"""``moderncnn completion bash|zsh|tcsh``: a shell completion script for every command.

The script is made by ``shtab`` from one parser holding each command's generated (jsonargparse)
parser as a sub-command, so it completes the command names, their flags and the choices of a
flag (``--precision fp32|bf16|int8``). Install it with
``moderncnn completion bash > ~/.local/share/bash-completion/completions/moderncnn``.
"""

from __future__ import annotations

import sys

SHELLS = ("bash", "zsh", "tcsh")


def completion_parser():
    """One jsonargparse parser: ``moderncnn`` with every command as a sub-command."""
    from jsonargparse import ArgumentParser

    from moderncnn.cli import COMMANDS
    from moderncnn.io.command_line import function_parser

    parser = ArgumentParser(prog="moderncnn", exit_on_error=False)
    commands = parser.add_subcommands(required=True, dest="command")
    for name, command in COMMANDS.items():
        if command.kind == "function":
            sub = function_parser(name, command)
        else:  # LightningCLI's commands: their config (the flags come from the config's classes)
            sub = ArgumentParser(prog=f"moderncnn {name}", exit_on_error=False)
            sub.add_argument("-c", "--config", help="training YAML or shipped config name")
        commands.add_subcommand(name, sub, help=command.help)
    return parser


def completion_main(argv: list[str]) -> int:
    """Print the completion script of the shell named in ``argv``."""
    if argv in (["-h"], ["--help"]):
        print(f"usage: moderncnn completion {{{','.join(SHELLS)}}}\n\n"
              "Print the shell completion script of every moderncnn command, e.g.\n"
              "  moderncnn completion bash > ~/.local/share/bash-completion/completions/"
              "moderncnn")  # fmt: skip
        return 0
    if len(argv) != 1 or argv[0] not in SHELLS:
        print(f"usage: moderncnn completion {{{','.join(SHELLS)}}}", file=sys.stderr)
        return 2
    try:
        import shtab
    except ImportError:
        print("moderncnn completion: error: needs shtab: pip install shtab", file=sys.stderr)
        return 1
    print(shtab.complete(completion_parser(), shell=argv[0]))
    return 0
