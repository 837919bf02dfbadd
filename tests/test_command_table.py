"""Every command of the CLI's command table, fed the inputs users get wrong.

Generated from :data:`moderncnn.cli.COMMANDS`: a command added there without a row here fails
``test_every_command_has_a_row``. Each bad input must give one line on stderr (no traceback),
exit status 1 (a mistake the user can fix) or 2 (a command line that does not parse), and
write nothing: neither where ``--out`` points nor in the working folder. A command that reads
no training config is given the broken YAML as its arguments file (``--config ARGS.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from moderncnn.cli import COMMANDS, main

# command -> argv for a given input path P (the artifact, data or config it reads) and an
# output path O inside the test's folder. `config`: P is a YAML config (a broken one is tried).
Row = tuple[Callable[[str, str], list[str]], bool]
ROWS: dict[str, Row] = {
    "models": (lambda p, o: [], False),
    "configs": (lambda p, o: [], False),
    "summary": (lambda p, o: ["--model", p, "--out", f"{o}.png"], False),
    "summary --arch": (lambda p, o: ["--arch", Path(p).name, "--out", f"{o}.png"], False),
    "fit": (lambda p, o: ["-c", p], True),
    "lr-find": (lambda p, o: ["-c", p, "--out", f"{o}.png"], True),
    "validate": (lambda p, o: ["-c", p], True),
    "test": (lambda p, o: ["-c", p], True),
    "predict": (lambda p, o: ["-c", p], True),
    "predict --model": (lambda p, o: ["--model", p, p, "--out", f"{o}.csv"], False),
    "features": (lambda p, o: ["--data", p, "--out", o, "--arch", "resnet18"], False),
    "features --arch": (lambda p, o: ["--data", p, "--out", o, "--arch", "resnt18"], False),
    "probe": (lambda p, o: [p, "--out", o], False),
    "pack": (lambda p, o: [p, "--out", o], False),
    "export": (lambda p, o: ["--model", p, "--format", "onnx", "--out", f"{o}.onnx"], False),
    "explain": (lambda p, o: ["--model", p, p, "--out", o], False),
    "report": (lambda p, o: [p], False),
    "plot": (lambda p, o: [p, "--out", f"{o}.png"], False),
    "preview": (lambda p, o: ["-c", p, "--out", f"{o}.png"], True),
    "compare": (lambda p, o: ["-c", p, "--models", "resnet18_cifar", "--out", o], True),
    "tune": (lambda p, o: ["-c", p, "--space", p, "--trials", "1", "--out", o], True),
}
CASES = ("missing path", "garbage file", "empty folder", "unknown flag", "broken yaml")


def _bad_input(case: str, folder: Path, config: bool) -> str:
    suffix = ".yaml" if config else ""
    if case == "missing path":
        return str(folder / f"missing{suffix}")
    if case == "garbage file":
        path = folder / f"garbage{suffix or '.bin'}"
        path.write_bytes(b"\x00\xff\x13garbage\x89PNG\r\n\x1a\n" * 20)
        return str(path)
    if case == "empty folder":
        (folder / "empty").mkdir()
        return str(folder / "empty")
    if case == "broken yaml":
        path = folder / "broken.yaml"
        path.write_text("model:\n  model: [resnet18\ntrainer: {max_epochs: 1\n")
        return str(path)
    # unknown flag (added below): with a config that exists, so that the flag is the one fault
    # (a missing config as well is reported first, as the user-fixable error it is)
    return "quickstart" if config else str(folder / "missing")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_every_command_has_a_row() -> None:
    assert set(COMMANDS) <= {row.split()[0] for row in ROWS}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_and_writes_nothing(
    row: str, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv_of, config = ROWS[row]
    command = row.split()[0]
    if command in ("models", "configs") and case not in ("unknown flag", "broken yaml"):
        pytest.skip(f"{command} reads no file")
    bad = _bad_input(case, tmp_path, config)
    argv = [command, *argv_of(bad, str(tmp_path / "out"))]
    if case == "broken yaml" and not config:  # the file of the command's own arguments
        argv = [command, "--config", bad]
    if case == "unknown flag":
        argv.append("--no-such-flag")
    before = _listing(tmp_path)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{argv}: {err}"
    assert lines[0].startswith(f"moderncnn {command}") or lines[0].startswith("moderncnn:"), err
    assert code == 2 if case == "unknown flag" else code in (1, 2), f"{argv}: {code} {err}"
    assert _listing(tmp_path) == before, argv
