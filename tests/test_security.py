"""Source checks of the package: nothing unpickles code, shells out, or downloads over HTTP.

Checked on the syntax tree of every module, so a new ``torch.load`` without
``weights_only=True`` fails here before it reaches a user. (Behaviour is tested beside it:
refused pickles in tests/test_bad_inputs_checkpoints.py, HTTPS-only, hash-checked downloads in
tests/transfer/test_weights.py.)
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from moderncnn.training.callbacks import AtomicCheckpointIO

PACKAGE = Path(__file__).resolve().parents[1] / "moderncnn"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def dotted(node: ast.AST) -> str:
    """``torch.load`` for the callee of ``torch.load(...)``; "" when not a plain name chain."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(dotted(n.func), n) for n in ast.walk(tree) if isinstance(n, ast.Call)]


def keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{call.lineno}"


def test_the_scan_sees_the_package() -> None:
    assert len(SOURCES) > 30
    # The one known torch.load, in the safe reader, is found (the scan does look at calls).
    found = [where(p, c) for p in SOURCES for name, c in calls(p) if name == "torch.load"]
    assert any(w.startswith("moderncnn/io/checkpoint.py:") for w in found)


def test_every_torch_load_is_weights_only() -> None:
    bad = [
        where(path, call)
        for path in SOURCES
        for name, call in calls(path)
        if name == "torch.load"
        if keyword(call, "weights_only") is not True
    ]
    assert not bad, f"torch.load without weights_only=True: {bad}"


@pytest.mark.parametrize(
    "forbidden", ["pickle.load", "pickle.loads", "eval", "exec", "os.system", "os.popen"]
)
def test_no_code_running_calls(forbidden: str) -> None:
    bad = [where(p, c) for p in SOURCES for name, c in calls(p) if name == forbidden]
    assert not bad, f"{forbidden}(...) in the package: {bad}"


def test_no_shell_in_subprocesses() -> None:
    bad = [
        where(path, call)
        for path in SOURCES
        for name, call in calls(path)
        if name.startswith("subprocess.") and keyword(call, "shell") not in (None, False)
    ]
    assert not bad, f"subprocess with shell=True: {bad}"


def test_no_plain_http_urls_are_fetched() -> None:
    # Docstrings may cite http:// pages; string constants used as values may not.
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        bad += [
            f"{path.name}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("http://")
            and id(node) not in docstrings
        ]
    # pretrained.py names "http://" only to refuse it (tests/transfer/test_weights.py).
    assert all(b.startswith("pretrained.py:") for b in bad), bad


def test_lightnings_checkpoint_reads_are_weights_only_even_when_asked_otherwise(
    tmp_path: Path,
) -> None:
    """The run's checkpoint I/O (and lr-find's) refuses pickled objects whatever Lightning
    passes: Lightning's learning-rate finder restores its checkpoint without saying."""
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "note": Path("x")}, path)
    io = AtomicCheckpointIO()
    for call in (
        lambda: io.load_checkpoint(path),
        lambda: io.load_checkpoint(path, weights_only=False),
        lambda: io.load_checkpoint(path, None, False),
    ):
        with pytest.raises(pickle.UnpicklingError):
            call()
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, plain)
    assert torch.equal(io.load_checkpoint(plain)["state_dict"]["w"], torch.ones(2))
