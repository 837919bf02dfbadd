"""configs/papers/degradation.yaml through `moderncnn compare`, as benchmarks/degradation.py
runs it: four tiny plain and residual nets for a few steps, then the Fig. 6 analogue."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moderncnn.training.compare import compare
from moderncnn.viz import plot_degradation
from moderncnn.viz.degradation import read_step_curves

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "papers" / "degradation.yaml"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MODELS = ["plain20", "plain56", "resnet20", "resnet56"]
# Every network at a few channels; the "56" ones two units a stage deeper than the "20" ones.
SHALLOW = {"channels": [4, 8, 8], "layers": [1, 1, 1]}
DEEP = {"channels": [4, 8, 8], "layers": [2, 2, 2]}
TINY = {
    "trainer.max_steps": 6,
    "trainer.val_check_interval": 3,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "model.curve_every_n_steps": 2,
    "data.init_args.batch_size": 16,
    "data.init_args.train_subset": 160,
    "data.init_args.val_size": 32,
}


def test_the_config_is_the_papers_fixed_step_budget() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    trainer, model = config["trainer"], config["model"]
    assert trainer["max_epochs"] == -1 and trainer["max_steps"] > 0  # steps, not time
    assert "max_time" not in trainer
    assert trainer["max_steps"] % trainer["val_check_interval"] == 0  # validated at the end
    assert trainer["check_val_every_n_epoch"] is None and trainer["precision"] == "32-true"
    assert trainer["max_steps"] // model["curve_every_n_steps"] >= 50  # >= 50 curve points
    assert (model["lr"], model["momentum"], model["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert config["data"]["init_args"]["batch_size"] == 128
    assert model["channels_last"] is False
    assert config["checkpoint"]["monitor"] is None  # the final model is tested, not the best


@pytest.mark.slow
def test_four_nets_train_for_the_same_steps_and_draw_fig6(tmp_path: Path) -> None:
    if not FASHION_MNIST.is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    overrides = {m: {"model.model_kwargs": DEEP if "56" in m else SHALLOW} for m in MODELS}
    summaries = compare(
        CONFIG, MODELS, seeds=1, out=tmp_path, overrides=TINY, model_overrides=overrides
    )
    assert sorted(s.model for s in summaries) == sorted(MODELS)
    for summary in summaries:
        curves = read_step_curves(summary.trials[0].run_dir)
        assert [s for s, _ in curves["train_acc_window"]] == [2, 4, 6]  # the same budget
        assert [s for s, _ in curves["val_acc"]] == [3, 6]
        assert summary.trials[0].test_acc is not None
        checkpoints = Path(summary.trials[0].run_dir, "checkpoints")
        assert (checkpoints / "final-step=6.ckpt").is_file()  # tested: the final model
    figure = plot_degradation(tmp_path, save=tmp_path / "degradation.png")
    lines = [line for ax in figure.axes for line in ax.lines]
    assert len(lines) == 8
    assert sorted(line.get_label() for line in lines if line.get_linestyle() == "--") == [
        "plain20", "plain20", "plain56", "plain56",
    ]  # fmt: skip
    assert (tmp_path / "degradation.png").stat().st_size > 0
