"""Class names are data, not markup: ``$...$`` is drawn as written (not as mathtext, which fails
to draw when malformed), and a name a spreadsheet would run as a formula (``=...``, ``+``,
``-``, ``@``) is written to CSV files with a leading ``'`` (issue #12, item 11)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import torch

from moderncnn.training.callbacks import ConfusionMatrixReport, plain_text_label, spreadsheet_safe

NAMES = ['=HYPERLINK("http://evil","x")', r"$\frac$", "$x$ and $y$", "+1", "@SUM(A1)", "cat"]


def test_formula_like_names_get_a_quote_and_others_stay() -> None:
    assert spreadsheet_safe("=1+1") == "'=1+1"
    assert [spreadsheet_safe(n)[0] for n in ["+1", "-1", "@x", "\tx", "\rx"]] == ["'"] * 5
    assert spreadsheet_safe("cat") == "cat" and spreadsheet_safe("a=b") == "a=b"
    assert plain_text_label("$x$") == r"\$x\$" and plain_text_label("cat") == "cat"


def test_confusion_report_of_hostile_class_names_draws_and_writes_safe_csv(
    tmp_path: Path, capsys
) -> None:
    n = len(NAMES)
    confusion = torch.eye(n, dtype=torch.long) * 3 + 1
    trainer = SimpleNamespace(loggers=[SimpleNamespace(log_dir=str(tmp_path))], datamodule=None)
    module = SimpleNamespace(hparams={"class_names": NAMES})
    ConfusionMatrixReport()._report(trainer, module, confusion)  # type: ignore[arg-type]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("per_class_accuracy.csv", "confusion_matrix.csv"):
        text = (tmp_path / name).read_text()
        cells = [cell for row in csv.reader(text.splitlines()) for cell in row]
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), (name, cells)
    rows = list(csv.reader((tmp_path / "per_class_accuracy.csv").read_text().splitlines()))
    assert [row[0] for row in rows[1:]] == [spreadsheet_safe(name) for name in NAMES]
    assert "$x$ and $y$" in capsys.readouterr().out  # printed as is
