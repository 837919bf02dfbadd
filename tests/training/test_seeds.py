"""One summary over seeds: `fit --seeds` and `compare` give the same text for the same numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from moderncnn.training.compare import markdown_table, summarize
from moderncnn.training.seeds import SeedRun, mean_std, print_summary, summary_markdown
from moderncnn.training.trials import TrialResult


def trial(seed: int, test_acc: float) -> TrialResult:
    return TrialResult("resnet", seed, {}, test_acc, test_acc, 0.5, [test_acc], 10, 100, 1.0, 1.0,
                       1, "")  # fmt: skip


def test_mean_and_sample_std_of_the_finite_values() -> None:
    mean, std, n = mean_std([0.8, None, 0.9, math.nan, 1.0])
    assert (mean, n) == (pytest.approx(0.9), 3) and std == pytest.approx(0.1)
    mean, std, n = mean_std([0.9])
    assert mean == 0.9 and math.isnan(std) and n == 1
    mean, std, n = mean_std([])
    assert math.isnan(mean) and math.isnan(std) and n == 0


@pytest.mark.parametrize(
    ("accuracies", "text"),
    [([0.9231], "92.31% ± –"), ([0.90, 0.92, 0.94], "92.00% ± 2.00%")],
)
def test_fit_seeds_and_compare_write_the_same_spread(
    accuracies: list[float], text: str, capsys, tmp_path: Path
) -> None:
    runs = [SeedRun(i, tmp_path / f"version_{i}", 1.0, {"test_acc": a})
            for i, a in enumerate(accuracies)]  # fmt: skip
    fit_markdown = summary_markdown(runs, ["fit", "-c", "config.yaml"])
    print_summary(runs, None)
    printed = capsys.readouterr().out
    compared = summarize({"resnet": [trial(i, a) for i, a in enumerate(accuracies)]})
    compare_markdown = markdown_table(compared, Path("config.yaml"), {})
    assert f"| test_acc | {text} |" in fit_markdown
    assert f"test_acc         {text}  (n = {len(accuracies)})" in printed
    assert f"| resnet | {text} |" in compare_markdown
    assert "nan" not in fit_markdown + printed + compare_markdown
    assert compared[0].row()["test_acc_std"] == ("" if len(accuracies) == 1 else "0.0200")
