"""The package root: every lazy name is visible to type checkers, each public name has one
home, and ``moderncnn --help`` answers without importing torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import moderncnn

INIT = Path(moderncnn.__file__)
SUBPACKAGES = ("data", "inference", "io", "models", "training", "transfer", "viz")


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(INIT.read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_type_checkers_see_every_lazy_name_as_the_object_it_is() -> None:
    seen = _type_checking_imports()
    assert set(seen) == set(moderncnn._LAZY)
    for name, module in seen.items():
        assert getattr(importlib.import_module(module), name) is getattr(moderncnn, name), name


def test_all_is_written_out_and_complete() -> None:
    assert moderncnn.__all__ == list(moderncnn._LAZY)


def test_no_object_is_exported_by_two_subpackages() -> None:
    homes: dict[int, list[str]] = {}
    for sub in SUBPACKAGES:
        package = importlib.import_module(f"moderncnn.{sub}")
        for name in getattr(package, "__all__", []):
            homes.setdefault(id(getattr(package, name)), []).append(f"moderncnn.{sub}.{name}")
    assert [paths for paths in homes.values() if len(paths) > 1] == []


def test_transfer_keeps_its_former_names_importable() -> None:
    from moderncnn.transfer import load_probe, predict

    assert predict is moderncnn.predict and callable(load_probe)


def test_help_imports_no_torch() -> None:
    code = (
        "import sys; from moderncnn.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "usage: moderncnn COMMAND" in out and out.strip().endswith("[]"), out
