"""Bad data files behind a config: CIFAR-10 batch and meta files whose values have the wrong
type, or no CIFAR-10 at all. Each is one line naming the file, and the refused run leaves no
``lightning_logs/version_N`` behind (the folder is opened before the data is read). And a run's
``metrics.csv`` with odd rows, read by ``moderncnn plot``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from moderncnn.cli import main as moderncnn_main
from moderncnn.training.cli import main


def cifar_config(data_dir: Path) -> dict:
    return {
        "model": {"model": "resnet18_cifar", "model_kwargs": {"channels": [8], "layers": [1]}},
        "data": {
            "class_path": "moderncnn.data.CIFAR10DataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 8, "val_size": 2},
        },
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "limit_train_batches": 1},
    }


def write_cifar(folder: Path, meta: object = None, labels: object = None) -> Path:
    """A CIFAR-10 batches folder of 4 images per batch, with `meta` / `labels` as given."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    data = np.zeros((4, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = {b"data": data, b"labels": [0, 1, 2, 3] if labels is None else labels}
        (batches / name).write_bytes(pickle.dumps(content))
    if meta is not None:
        (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": meta}))
    return folder


def run_fit(workdir: Path, config: dict) -> int:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        return main(["fit", "-c", "config.yaml"])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    ("meta", "labels", "message"),
    [
        (5, None, "batches.meta: label_names should be a list of CIFAR-10's class names, got int"),
        ("airplane", None, "label_names should be a list of CIFAR-10's class names, got str"),
        ([b"cat", 3], None, "batches.meta: label_names ['cat', 3] are not CIFAR-10's classes"),
        (None, "abcd", "data_batch_1: expected 'labels' to be a list of integers, got str"),
        (None, 7, "data_batch_1: expected 'labels' to be a list of integers, got int"),
        (None, [0.5, 1, 2, 3], "expected 'labels' to be a list of integers, got list"),
        (None, [0, 1, 2, 2**70], "data_batch_1: labels must be in 0..9"),
    ],
    ids=["meta int", "meta str", "meta mixed", "labels str", "labels int", "labels floats",
         "labels huge"],
)  # fmt: skip
def test_cifar_files_with_wrong_types_are_named_and_leave_no_run_folder(
    meta, labels, message: str, tmp_path: Path, capsys
) -> None:
    data = write_cifar(tmp_path / "data", meta=meta, labels=labels)
    work = tmp_path / "work"
    work.mkdir()
    assert run_fit(work, cifar_config(data)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err, err
    assert sorted(p.name for p in work.iterdir()) == ["config.yaml"]


def test_missing_cifar_leaves_no_run_folder(tmp_path: Path, capsys) -> None:
    assert run_fit(tmp_path, cifar_config(tmp_path / "nothing_here")) == 1
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# -- issue #12, item 11: `moderncnn plot` on a metrics.csv with odd rows ----------------------

ODD_METRICS = {
    "extra fields": "epoch,step,train_loss,val_acc\n0,5,1.0,0.5\n1,11,0.8,0.6,extra\n",
    "epoch inf": "epoch,step,train_loss,val_acc\n0,5,1.0,0.5\ninf,11,0.8,0.6\n",
    "epoch nan": "epoch,step,train_loss,val_acc\n0,5,1.0,0.5\nnan,11,0.8,0.6\n",
    "not a number": "epoch,step,train_loss,val_acc\n0,5,1.0,0.5\n1,11,abc,0.6\n",
}


@pytest.mark.parametrize("case", sorted(ODD_METRICS))
def test_plot_of_an_odd_metrics_row_is_one_message(case: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "metrics.csv").write_text(ODD_METRICS[case])
    status = moderncnn_main(["plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.startswith("moderncnn plot: error: ") and "metrics.csv" in err
    assert not (tmp_path / "curves.png").exists()
