"""``moderncnn report RUN_DIR``: one self-contained HTML page of a run.

The page brings together what a run folder holds: the run at a glance (``run.json``), the
learning curves, the confusion matrix, per-class accuracy, the most confused pairs, the top
losses with Grad-CAM, the layer table and the resolved config. Images are embedded as data
URIs, so the page needs no network and no server. It is built with a Jinja2 template whose
autoescaping turns every text from the data (class names, file names, config values) into
text, never markup.

``moderncnn fit`` and ``moderncnn test`` write it at the end (:class:`RunReport`).
"""

from __future__ import annotations

import base64
import datetime
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from jinja2 import Environment, PackageLoader, select_autoescape
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.errors import DataError, MissingFileError, OutputError
from moderncnn.viz import read_confusion_matrix
from moderncnn.viz._run_folder import LinkOutsideError, read_csv_rows, read_text, run_file
from moderncnn.viz.confusion import CONFUSION_CSV
from moderncnn.viz.interpret import most_confused

from .callbacks import run_dir
from .run_facts import MAX_SECONDS, RUN_FACTS, read_run_facts, valid_facts
from .top_losses import TOP_LOSSES_CSV

REPORT = "report.html"
FIGURES = {
    "curves": ("curves.png", "Learning curves"),
    "confusion": ("confusion_matrix.png", "Confusion matrix"),
    "confused": ("most_confused.png", "Most confused pairs"),
    "top_losses": ("top_losses.png", "Top losses, with Grad-CAM of the prediction"),
}


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("moderncnn.training", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        keep_trailing_newline=True,
    )


class _RunFiles:
    """The run folder's files as the report may read them: a file that is a link leading out of
    the folder is left out (and noted on the page), never embedded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.skipped: list[str] = []

    def get(self, name: str) -> Path | None:
        try:
            return run_file(self.folder, name)
        except LinkOutsideError as err:
            self.skipped.append(str(err))
            return None

    def data_uri(self, name: str) -> str | None:
        path = self.get(name)
        if path is None:
            return None
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    def csv_rows(self, name: str) -> list[dict[str, str]]:
        path = self.get(name)
        return [] if path is None else read_csv_rows(path)


def _best_val(files: _RunFiles, facts: dict[str, Any]) -> float | None:
    """The run's best validation accuracy: the checkpoint's record, else metrics.csv's."""
    if facts.get("best_val") is not None and facts.get("best_monitor") == "val_acc":
        return float(facts["best_val"])
    values = []
    for row in files.csv_rows("metrics.csv"):
        try:
            values.append(float(row.get("val_acc") or "nan"))
        except (TypeError, ValueError):
            continue
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


def _per_class(files: _RunFiles, names: list[str] | None) -> tuple[list[dict[str, Any]], list]:
    """Per-class rows (class, images, correct, accuracy) and the most confused pairs, from
    ``confusion_matrix.csv``; the class names as the model holds them (the CSV's are made
    spreadsheet-safe)."""
    path = files.get(CONFUSION_CSV)
    if path is None:
        return [], []
    try:
        counts, csv_names = read_confusion_matrix(path)
    except (MissingFileError, DataError):
        return [], []
    names = names if names and len(names) == len(csv_names) else csv_names
    rows = []
    for name, row, correct in zip(names, counts.tolist(), counts.diag().tolist(), strict=True):
        images = sum(row)
        rows.append(
            {"name": name, "images": images, "correct": correct, "accuracy": correct / images}
            if images
            else {"name": name, "images": 0, "correct": 0, "accuracy": None}
        )
    return rows, most_confused(counts, names, n=10)


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float) or not 0 <= seconds < MAX_SECONDS:
        return None
    return str(datetime.timedelta(seconds=round(seconds)))


def _glance(files: _RunFiles, facts: dict[str, Any], per_class: list[dict[str, Any]]) -> list:
    """(label, value) rows of the "at a glance" table; facts not recorded are left out."""
    rows = [*_model_rows(facts), *_data_rows(facts)]
    rows += [
        ("epochs", facts.get("epochs")),
        ("wall time (fit)", _duration(facts.get("fit_seconds"))),
        ("wall time (test)", _duration(facts.get("test_seconds"))),
        ("precision", facts.get("precision")),
        ("hardware", _hardware(facts.get("hardware") or {})),
    ]
    rows += _result_rows(files, facts)
    return [(label, value) for label, value in rows if value not in (None, "")]


def _model_rows(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    kwargs = facts.get("model_kwargs") or {}
    macs = None
    if "macs" in facts:
        macs = f"{facts['macs'] / 1e6:,.1f} M at {'x'.join(map(str, facts['input_size']))}"
    return [
        ("model", facts.get("model", "") + (f" {kwargs}" if kwargs else "")),
        ("parameters", f"{facts['parameters']:,}" if "parameters" in facts else None),
        ("MACs per image", macs),
    ]


def _data_rows(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    counts = ("train_images", "val_images", "test_images")
    images = None
    if any(k in facts for k in counts):
        images = " / ".join(str(facts.get(k, "-")) for k in counts)
    return [
        ("data", facts.get("data")),
        ("classes", len(facts["class_names"]) if facts.get("class_names") else None),
        ("images (train / val / test)", images),
    ]


def _hardware(hw: dict[str, Any]) -> str | None:
    """``"AMD EPYC, 16 cores, 16 torch threads, torch 2.5.1"``: what of it was recorded."""
    parts = (
        hw.get("gpu") or hw.get("cpu"),
        f"{hw['cpu_cores']} cores" if hw.get("cpu_cores") else None,
        f"{hw['torch_threads']} torch threads" if hw.get("torch_threads") else None,
        f"torch {hw['torch']}" if hw.get("torch") else None,
    )
    return ", ".join(str(v) for v in parts if v) or None


def _result_rows(files: _RunFiles, facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """Best validation accuracy, the test metrics that were recorded, the tested checkpoint."""
    test = facts.get("test_metrics") or {}
    best = _best_val(files, facts)
    rows = [("best val accuracy", None if best is None else f"{best:.2%}")]
    shown = {"test_acc": "test accuracy", "test_acc_top5": "test top-5 accuracy"}
    rows += [(label, f"{test[key]:.2%}") for key, label in shown.items() if key in test]
    if "test_loss" in test:
        rows.append(("test loss", f"{test['test_loss']:.4f}"))
    if facts.get("tested_checkpoint"):
        rows.append(("tested checkpoint", facts["tested_checkpoint"]))
    return rows


def render_report(run: str | Path) -> str:
    """The report page of a run folder, as HTML text."""
    folder = Path(run)
    if not folder.is_dir():
        raise MissingFileError(f"run folder {folder} does not exist")
    if not (folder / "metrics.csv").is_file() and not (folder / "run.json").is_file():
        raise DataError(
            f"{folder} is not a run folder (it has no metrics.csv or run.json); give a "
            "lightning_logs/version_N folder"
        )
    files = _RunFiles(folder)
    files.get(RUN_FACTS)  # notes a link out of the folder; read_run_facts leaves it unread
    facts = valid_facts(read_run_facts(folder))
    per_class, confused = _per_class(files, facts.get("class_names"))
    config = files.get("config.yaml")
    figures = {
        key: {"src": files.data_uri(name), "title": title, "file": name}
        for key, (name, title) in FIGURES.items()
    }
    top_losses = files.csv_rows(TOP_LOSSES_CSV)
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=f"{facts.get('model', 'run')}: {folder.resolve().name}",
            folder=str(folder),
            glance=_glance(files, facts, per_class),
            figures=figures,
            per_class=per_class,
            confused=confused,
            top_losses=top_losses,
            summary=facts.get("summary"),
            config=None if config is None else read_text(config),
            skipped=files.skipped,
        )
    )


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page of a run: curves, confusion matrix, settings, facts.

    Written atomically (a reader never sees half a page); returns its path. An unwritable
    place is an OutputError naming it.

    Args:
        run: a run folder, e.g. lightning_logs/version_0.
        out: HTML file to write (default: RUN/report.html).
    """
    html = render_report(run)
    path = Path(out) if out is not None else Path(run) / REPORT
    try:
        atomic_write_text(path, html)
    except OSError as err:
        raise OutputError(
            f"cannot write the report {path}: {err.strerror or err}; give another file with "
            "--out (a read-only run folder can still be reported elsewhere)"
        ) from err
    return path


class RunReport(L.Callback):
    """Writes the run report at the end of ``fit`` and of ``test`` and prints its path."""

    def _write(self, trainer: L.Trainer) -> None:
        folder = run_dir(trainer)
        if folder is None or not folder.is_dir():
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush the rows not yet written: the curves read them
        print(f"run report: {write_report(folder)}")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)


def show_report(path: Path, arguments: dict[str, Any]) -> int:
    """What ``moderncnn report`` prints: where the page is."""
    print(f"run report: {path}")
    return 0
