"""plot_degradation: the ResNet paper's Fig. 6 from step-logged runs (synthetic metrics.csv
files here; tests/training/test_degradation_config.py trains real ones)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from moderncnn.io.errors import DataError, MissingFileError
from moderncnn.viz import plot_degradation
from moderncnn.viz.degradation import read_step_curves, runs_of_compare

HEADER = "epoch,step,train_acc_window,train_loss_window,val_acc,val_loss\n"


@pytest.fixture(autouse=True)
def _backend_unchanged():
    before = matplotlib.rcParams._get_backend_or_none()
    yield
    assert matplotlib.rcParams._get_backend_or_none() == before


def write_run(folder: Path, train_acc: list[float], val_acc: list[float], every: int = 2) -> Path:
    """A metrics.csv as ImageClassifier(curve_every_n_steps=every) and validation every 4
    steps write it: the 0-based index of each window's / validation's last step."""
    folder.mkdir(parents=True)
    rows = [f"0,{every * (i + 1) - 1},{a},{1 - a},," for i, a in enumerate(train_acc)]
    rows += [f"0,{4 * (i + 1) - 1},,,{a},{1 - a}" for i, a in enumerate(val_acc)]
    (folder / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return folder


def compare_folder(root: Path, seeds: int = 1) -> Path:
    """A compare --out folder: four networks, the deeper plain one worst."""
    accuracy = {"plain20": 0.8, "plain56": 0.6, "resnet20": 0.82, "resnet56": 0.85}
    for name, acc in accuracy.items():
        for seed in range(seeds):
            acc_s = acc + 0.01 * seed
            folder = root / "runs" / name / f"seed{seed}"
            write_run(folder, [acc_s - 0.1, acc_s - 0.05, acc_s, acc_s], [acc_s - 0.05, acc_s])
    return root


def test_read_step_curves_counts_steps_done(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [0.5, 0.6, 0.7], [0.55, 0.65])
    curves = read_step_curves(run)
    assert curves["train_acc_window"] == [(2, 0.5), (4, 0.6), (6, 0.7)]
    assert curves["val_acc"] == [(4, 0.55), (8, 0.65)]
    assert [s for s, _ in curves["train_loss_window"]] == [2, 4, 6]


def test_eight_lines_plain_dashed_one_colour_per_depth(tmp_path: Path) -> None:
    figure = plot_degradation(compare_folder(tmp_path), save=tmp_path / "fig.png")
    assert isinstance(figure, Figure) and (tmp_path / "fig.png").stat().st_size > 0
    train, val = figure.axes
    assert train.get_title() == "training error" and val.get_title() == "validation error"
    lines = train.lines + val.lines
    assert len(lines) == 8  # four networks x (training, validation)
    for line in lines:
        assert line.get_linestyle() == ("--" if line.get_label().startswith("plain") else "-")
    colour = {line.get_label(): to_hex(line.get_color()) for line in train.lines}
    assert colour["plain20"] == colour["resnet20"] != colour["plain56"] == colour["resnet56"]
    by_name = {line.get_label(): line for line in train.lines}
    assert list(by_name["plain56"].get_xdata()) == [2, 4, 6, 8]
    assert by_name["plain56"].get_ydata()[-1] == pytest.approx(40.0)  # error in %
    assert by_name["plain56"].get_ydata()[-1] > by_name["plain20"].get_ydata()[-1]
    assert [t.get_text() for t in train.get_legend().get_texts()] == [
        "plain20", "resnet20", "plain56", "resnet56",
    ]  # fmt: skip


def test_seeds_give_their_mean_and_a_band(tmp_path: Path) -> None:
    figure = plot_degradation(compare_folder(tmp_path, seeds=2))
    train = figure.axes[0]
    assert len(train.lines) == 4 and len(train.collections) == 4  # one band per network
    resnet56 = next(line for line in train.lines if line.get_label() == "resnet56")
    assert resnet56.get_ydata()[-1] == pytest.approx(100 * (1 - 0.855))
    assert "2 seed(s)" in figure.texts[0].get_text()


def test_runs_given_as_a_mapping_and_the_errors(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", [0.5, 0.6], [0.55])
    figure = plot_degradation({"plain20": run, "resnet20": [run]}, title="two")
    assert len(figure.axes[0].lines) == 2 and figure.texts[0].get_text() == "two"
    assert runs_of_compare(compare_folder(tmp_path / "c"))["resnet20"][0].name == "seed0"
    with pytest.raises(MissingFileError, match="give the --out folder of a compare"):
        plot_degradation(tmp_path / "nothing")
    with pytest.raises(DataError, match="at least one run"):
        plot_degradation({})
