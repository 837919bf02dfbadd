"""The README's commands are spelled as the commands themselves take them: every flag a
`moderncnn CMD ...` line of the README uses is one that `moderncnn CMD --help` lists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from moderncnn.cli import main

REPO = Path(__file__).resolve().parents[1]
# LightningCLI's commands take every config key as a dotted flag: not listed one by one; fit's
# --seeds is read before LightningCLI parses the rest (training/cli.py).
LIGHTNING = {"fit", "validate", "test"}
BEFORE_LIGHTNING = {"--seeds"}


def readme_commands() -> list[list[str]]:
    """Each `moderncnn ...` command of the README's bash blocks and table cells, as argv."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
    ]
    lines += re.findall(r"`(moderncnn [^`]+)`", text)
    commands = []
    for line in lines:
        line = line.split("  #", 1)[0].strip()
        if line.startswith("moderncnn ") and "…" not in line:
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_has_commands_to_check() -> None:
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_each_readme_flag_is_one_its_command_lists(argv: list[str], capsys) -> None:
    if not argv or argv[0].startswith("-"):
        return  # `moderncnn --help`
    command = argv[0]
    flags = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")}
    if command in LIGHTNING:
        flags = {f for f in flags if "." not in f} - BEFORE_LIGHTNING  # config keys
    assert main([command, "--help"]) == 0
    listed = capsys.readouterr().out
    for flag in flags:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}([\s\]=,]|$)", listed, re.M), (
            f"README: moderncnn {' '.join(argv)}: {flag} is not in `moderncnn {command} --help`"
        )
