"""`moderncnn pack` and StreamingDataModule: litdata chunks, made the same twice, trained from in
one process and in two (DDP, gloo), to the accuracy the image folder gives."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from moderncnn.cli import main as cli_main
from moderncnn.data import StreamingDataModule
from moderncnn.training.cli import main as fit_main
from moderncnn.viz import read_metrics

pytest.importorskip("litdata")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ (48) and val/ (16) 32 px images of 4 classes told apart by colour; one broken."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("val", 16)):
        for i in range(count):
            label = i % 4
            pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            pixels[..., label % 3] += 120 + 40 * (label // 3)
            target = tmp_path / "images" / split / f"c{label}" / f"{i:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target)
    (tmp_path / "images" / "train" / "c1" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "images"


def _chunks(packed: Path) -> dict[str, bytes]:
    return {str(p.relative_to(packed)): p.read_bytes() for p in sorted(packed.rglob("*.bin"))}


def _index(packed: Path, split: str) -> dict:
    index = json.loads((packed / split / "index.json").read_text())
    index.pop("updated_at")  # when it was written: the only difference
    return index


def test_packing_twice_gives_the_same_chunks(folder: Path, tmp_path: Path, capsys) -> None:
    for out in ("a", "b"):
        argv = ["pack", str(folder), "--out", str(tmp_path / out), "--workers", "2"]
        assert cli_main([*argv, "--chunk_bytes", "20KB"]) == 0
    assert "train: 48 images, 1 unreadable left out" in capsys.readouterr().out
    a, b = _chunks(tmp_path / "a"), _chunks(tmp_path / "b")
    assert len(a) > 4 and a == b  # several chunks, byte for byte the same
    assert _index(tmp_path / "a", "train") == _index(tmp_path / "b", "train")
    data = StreamingDataModule(str(tmp_path / "a"), image_size=32)
    assert data.class_names == ["c0", "c1", "c2", "c3"] and data.num_classes == 4
    images, labels = next(iter(data.val_dataloader()))
    assert (
        images.shape == (16, 3, 32, 32)
        and sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    )
    # Nothing written on refusal: a folder that holds other files is not packed over.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "other")]) == 1
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def _config(data: dict) -> dict:
    """Three epochs of a 10k-parameter ResNet on the 48 images, 4 per step."""
    return {
        "seed_everything": 7,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16, 16, 16], "layers": [1, 1, 1, 1]},
            "lr": 0.05,
        },
        "data": data,
        "trainer": {
            "max_epochs": 3,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }


STATS = {
    "image_size": 32,
    "batch_size": 4,
    "augmentations": [],
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}


def _val_acc(run: Path) -> float:
    (metrics,) = run.rglob("metrics.csv")
    return read_metrics(metrics)[2]["val_acc"]  # the third (last) epoch


@pytest.mark.slow
def test_training_from_packed_data_learns_as_from_the_folder(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0
    packed = {"class_path": "moderncnn.data.StreamingDataModule",
              "init_args": {"input_dir": str(tmp_path / "packed"), **STATS}}  # fmt: skip
    images = {"class_path": "moderncnn.data.ImageFolderDataModule",
              "init_args": {"root": str(folder), **STATS}}  # fmt: skip
    accuracy = {}
    for name, data in (("packed", packed), ("folder", images)):
        run = tmp_path / f"run_{name}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(_config(data)))
        monkeypatch.chdir(run)
        fit_main(["fit", "-c", "config.yaml"])
        accuracy[name] = _val_acc(run)
    assert accuracy["packed"] >= 0.5 and accuracy["folder"] >= 0.5, accuracy  # chance: 0.25
    assert abs(accuracy["packed"] - accuracy["folder"]) <= 0.25, accuracy  # 16 val images


@pytest.mark.slow
def test_two_processes_train_from_packed_data(folder: Path, tmp_path: Path) -> None:
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0
    packed = {"class_path": "moderncnn.data.StreamingDataModule",
              "init_args": {"input_dir": str(tmp_path / "packed"), **STATS}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config(packed)))
    command = [sys.executable, "-m", "moderncnn.cli", "fit", "-c", str(tmp_path / "config.yaml"),
               "--trainer.strategy=ddp", "--trainer.devices=2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr
    (metrics,) = tmp_path.rglob("metrics.csv")
    steps = [int(row["step"]) for row in csv.DictReader(metrics.open()) if row["step"]]
    # 47 images, 2 processes x 4 per step: 6 steps an epoch on each process (litdata gives
    # both the same number of batches, or DDP's gradient all-reduce would wait forever).
    assert max(steps) == 3 * 6 - 1
    assert _val_acc(tmp_path) >= 0.5  # chance: 0.25
