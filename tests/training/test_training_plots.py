"""Plots: metrics.csv merging, confusion matrix and the preview grid of a config's data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from moderncnn.training.plots import (
    plot_curves,
    plot_main,
    preview_main,
    read_metrics,
    save_confusion_matrix,
)

PNG = b"\x89PNG\r\n\x1a\n"

# The layout Lightning's CSVLogger writes: one sparse row per logging call.
SPARSE_CSV = """epoch,step,train_acc,train_loss,val_acc,val_loss
0,9,,,0.5,1.2
0,9,0.4,1.5,,
1,19,,,0.7,0.9
1,19,0.6,1.1,,
"""


def test_read_metrics_merges_the_rows_of_an_epoch(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(SPARSE_CSV)
    epochs = read_metrics(tmp_path / "metrics.csv")
    assert epochs == {
        0: {"train_acc": 0.4, "train_loss": 1.5, "val_acc": 0.5, "val_loss": 1.2},
        1: {"train_acc": 0.6, "train_loss": 1.1, "val_acc": 0.7, "val_loss": 0.9},
    }


def test_curves_of_a_resumed_run_merge_both_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(SPARSE_CSV)
    second.write_text("epoch,step,val_acc\n1,19,0.8\n2,29,0.85\n")
    out = plot_curves([first, second], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG


def test_plot_of_a_folder_without_metrics_fails_clearly(tmp_path: Path, capsys) -> None:
    assert plot_main([str(tmp_path)]) == 1
    assert f"{tmp_path / 'metrics.csv'} does not exist" in capsys.readouterr().err


def test_confusion_matrix_checks_its_shape(tmp_path: Path) -> None:
    out = save_confusion_matrix([[5, 1], [2, 7]], ["cat", "dog"], tmp_path / "cm.png", "t")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"confusion matrix is \(2, 2\) but there are 3 classes"):
        save_confusion_matrix(torch.eye(2), ["a", "b", "c"], tmp_path / "bad.png")


def test_preview_draws_a_grid_of_the_configs_data(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    data = {"data_dir": str(fashion_mnist_dir), "train_subset": 256, "val_size": 16}
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"model": "resnet18_cifar"},  # other sections are ignored
                "data": {"class_path": "FashionMNISTDataModule", "init_args": data},
            }
        )
    )
    out = tmp_path / "grid.png"
    assert preview_main(["-c", str(config), "-o", str(out), "-n", "12"]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5_000


def test_preview_names_a_bad_data_section(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  class_path: FashionMNISTDataModule\n  init_args: {batchsize: 8}\n")
    assert preview_main(["-c", str(config)]) == 1
    assert "batchsize" in capsys.readouterr().err
