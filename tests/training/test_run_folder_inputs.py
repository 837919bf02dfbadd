"""Run folders from elsewhere, read by ``report`` and ``plot``: links leading out of the folder
are never followed, hand-edited ``run.json`` values and re-encoded CSVs render or are one line,
and a read-only run folder is named (issue 23: H6, M9, L5). No training: hand-made folders."""

from __future__ import annotations

import base64
import errno
import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from moderncnn.cli import main as cli
from moderncnn.viz._figure import finish, new_figure

SECRET = "root:x:0:0:SECRET-LINE:/root:/bin/bash\n"
METRICS = (
    "epoch,step,train_loss,val_acc,val_loss\n0,3,2.1,,\n0,3,,0.25,2.0\n1,7,1.9,,\n1,7,,0.5,1.8\n"
)
CONFUSION = "true \\ predicted,a,b\na,3,1\nb,0,4\n"
TOP_LOSSES = "test_index,true,predicted,loss,p_true,p_predicted\n5,a,b,3.2,0.04,0.9\n"
FACTS = {"model": "resnet18_cifar", "parameters": 5000, "epochs": 2, "fit_seconds": 12.5}


def make_run(folder: Path, facts: dict | None = None) -> Path:
    """A run folder as ``fit`` + ``test`` leave it, without the training."""
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(METRICS)
    (folder / "confusion_matrix.csv").write_text(CONFUSION)
    (folder / "top_losses.csv").write_text(TOP_LOSSES)
    (folder / "config.yaml").write_text("seed_everything: 0\n")
    (folder / "run.json").write_text(json.dumps(FACTS if facts is None else facts))
    Image.new("RGB", (8, 8), "red").save(folder / "curves.png")
    return folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "passwd"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def report(run: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli(["report", str(run), *args])
    out, err = capsys.readouterr()
    page = run / "report.html"
    return code, err, page.read_text() if page.is_file() else ""


# -- H6: links leading out of the run folder ---------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "curves.png",
        "config.yaml",
        "run.json",
        "metrics.csv",
        "top_losses.csv",
        "confusion_matrix.csv",
    ],
)
def test_report_never_embeds_a_file_that_links_out_of_the_run_folder(
    tmp_path: Path, secret: Path, capsys, name: str
) -> None:
    run = make_run(tmp_path / "run")
    (run / name).unlink()
    (run / name).symlink_to(secret)
    code, err, html = report(run, capsys)
    assert code == 0, err
    encoded = base64.b64encode(secret.read_bytes()).decode()
    assert "SECRET-LINE" not in html and encoded[:40] not in html
    assert f"{run / name} is a link to {secret}, outside the run folder" in html


def test_report_follows_links_within_the_run_folder(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "plots").mkdir()
    (run / "curves.png").rename(run / "plots" / "curves.png")
    (run / "curves.png").symlink_to(Path("plots") / "curves.png")
    code, _, html = report(run, capsys)
    png = base64.b64encode((run / "plots" / "curves.png").read_bytes()).decode()
    assert code == 0 and png in html and "outside the run folder" not in html


def test_a_run_folder_that_is_itself_a_link_is_read(tmp_path: Path, capsys) -> None:
    real = make_run(tmp_path / "real")
    (tmp_path / "alias").symlink_to(real)
    code, _, html = report(tmp_path / "alias", capsys)
    assert code == 0 and "Learning curves" in html and "outside the run folder" not in html


def test_plot_refuses_a_metrics_csv_that_links_out_of_the_run_folder(
    tmp_path: Path, secret: Path, capsys
) -> None:
    run = make_run(tmp_path / "run")
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to(secret)
    assert cli(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "outside the run folder" in err and "SECRET" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


def test_plot_replaces_a_linked_curves_png_never_writing_its_target(
    tmp_path: Path, secret: Path
) -> None:
    run = make_run(tmp_path / "run")
    (run / "curves.png").unlink()
    (run / "curves.png").symlink_to(secret)
    assert cli(["plot", str(run)]) == 0
    assert secret.read_text() == SECRET
    assert not (run / "curves.png").is_symlink()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


# -- M9: hand-edited run.json, re-encoded CSVs ---------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        {"parameters": "many"},
        {"parameters": 1e300, "epochs": -3, "steps": True},
        {"macs": "x", "input_size": 3},
        {"macs": 1e9, "input_size": ["a"]},
        {"hardware": [1, 2]},
        {"hardware": {"cpu": 5, "cpu_cores": "two", "torch": ["2"]}},
        {"fit_seconds": 1e300, "test_seconds": -1},
        {"fit_seconds": math.nan, "test_seconds": math.inf},
        {"test_metrics": {"test_acc": "high", "test_loss": math.nan}},
        {"test_metrics": [0.5]},
        {"model": 5, "model_kwargs": [1]},
        {"class_names": "abc", "data": {"a": 1}},
        {"best_val": math.nan, "best_monitor": "val_acc"},
        {"best_val": "0.9", "best_monitor": "val_acc"},
        {"best_val": 1e300, "best_monitor": "val_acc"},
    ],
)
def test_report_renders_the_valid_facts_of_a_hand_edited_run_json(
    tmp_path: Path, capsys, edit: dict
) -> None:
    run = make_run(tmp_path / "run", {**FACTS, **edit} if "model" in edit else FACTS | edit)
    code, err, html = report(run, capsys)
    assert code == 0, err
    assert "<th>epochs</th>" in html or edit.get("epochs") == -3


def test_report_of_a_run_json_nested_too_deeply_still_renders(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err, html = report(run, capsys)
    assert code == 0, err
    assert "Learning curves" in html


def test_report_and_plot_read_csvs_resaved_as_latin1(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "confusion_matrix.csv").write_bytes(CONFUSION.replace("a", "caf\xe9").encode("latin-1"))
    (run / "top_losses.csv").write_bytes(TOP_LOSSES.replace(",a,", ",\xe9t\xe9,").encode("cp1252"))
    (run / "metrics.csv").write_bytes(METRICS.encode("utf-16"))
    code, err, html = report(run, capsys)
    assert code == 0, err
    assert "caf\ufffd" in html and "\ufffdt\ufffd" in html
    assert cli(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 1  # UTF-16: not numbers
    err = capsys.readouterr().err
    assert "metrics.csv" in err and len(err.splitlines()) == 1


def test_a_csv_with_an_oversized_field_is_one_line(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "top_losses.csv").write_text('a,b\n"' + "x" * 200_000 + '",1\n')
    code, err, _ = report(run, capsys)
    assert code == 1 and "top_losses.csv: not a readable CSV file" in err
    assert len(err.splitlines()) == 1


# -- faults: a read-only run folder --------------------------------------------------------------


def test_read_only_run_folder_is_named_and_can_be_reported_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = make_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    real_mkstemp = os.sys.modules["tempfile"].mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 -- tempfile's own name
        # Root ignores folder permissions; a read-only mount is simulated (EROFS).
        if dir is not None and Path(dir).resolve() == run.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr("moderncnn.io.atomic.tempfile.mkstemp", mkstemp)
    code, err, _ = report(run, capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert f"cannot write the report {run / 'report.html'}: Read-only file system" in err
    assert cli(["plot", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write the figure to {run / 'curves.png'}: Read-only" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, nothing lost
    out = tmp_path / "elsewhere.html"
    assert cli(["report", str(run), "--out", str(out)]) == 0 and "<html" in out.read_text()
    assert cli(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0


# -- L5: a figure is written where it was asked --------------------------------------------------


def test_a_figure_is_written_exactly_where_asked(tmp_path: Path) -> None:
    figure = new_figure()
    figure.add_subplot().plot([1, 2])
    finish(figure, tmp_path / "adir")
    assert (tmp_path / "adir").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "adir.png").exists()
    finish(figure, tmp_path / "curve.pdf")
    assert (tmp_path / "curve.pdf").read_bytes()[:4] == b"%PDF"


def test_lr_find_refuses_a_folder_or_unknown_format_before_training(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  model: resnet18_cifar\n")
    (tmp_path / "adir").mkdir()
    for out, said in (("adir", "it is a folder"), ("lr.v2", "'.v2' is not an image format")):
        assert cli(["lr-find", "-c", str(config), "--out", str(tmp_path / out)]) == 1
        err = capsys.readouterr().err
        assert said in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["metrics.csv", "confusion_matrix.csv", "run.json", "curves.png"])
def test_a_file_that_is_a_symlink_loop_is_absent_not_a_traceback(
    tmp_path: Path, capsys, name: str
) -> None:
    run = make_run(tmp_path / "run")
    (run / name).unlink()
    (run / name).symlink_to(f"{name}.loop")  # found by tests/test_fuzz_artifacts.py
    (run / f"{name}.loop").symlink_to(name)
    code, err, html = report(run, capsys)
    assert code == 0 and "Traceback" not in err and "<html" in html
    code = cli(["plot", str(run), "--out", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert code == (1 if name == "metrics.csv" else 0) and len(err.splitlines()) == code
    if code:
        assert f"{run / name} does not exist" in err
