"""`moderncnn pack` and StreamingDataModule: litdata chunks, made the same twice, trained from in
one process and in two (DDP, gloo), to the accuracy the image folder gives."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
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


class _SeenLabels(L.Callback):
    """The labels of every training batch, by global step."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.by_step[trainer.global_step] = batch[1].tolist()


def _fit(data: StreamingDataModule, root: Path, max_steps: int, ckpt_path: str | None = None):
    from moderncnn import ImageClassifier

    L.seed_everything(3)
    model = ImageClassifier(
        "resnet18_cifar",
        num_classes=4,
        model_kwargs={"channels": [4, 4, 4, 4], "layers": [1] * 4},
        scheduler="none",  # the same schedule whether the run stops at step 3 or 8
    )
    seen = _SeenLabels()
    last = L.pytorch.callbacks.ModelCheckpoint(root, every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[seen, last],
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return seen.by_step


def test_a_streamed_run_resumed_mid_epoch_goes_on_with_the_batches_it_had_not_seen(
    folder: Path, tmp_path: Path
) -> None:
    """litdata's loader state travels in the checkpoint (Lightning saves a stateful loader's
    state): resumed at step 3 of an 11-step epoch, the run sees steps 3-7 of the uninterrupted
    run, not the epoch's first batches again."""
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0

    def data() -> StreamingDataModule:
        return StreamingDataModule(str(tmp_path / "packed"), **STATS)

    whole = _fit(data(), tmp_path / "whole", max_steps=8)
    assert sorted(whole) == list(range(8))
    _fit(data(), tmp_path / "first", max_steps=3)
    (checkpoint,) = (tmp_path / "first").glob("*step=3.ckpt")
    resumed = _fit(data(), tmp_path / "resumed", max_steps=8, ckpt_path=str(checkpoint))
    assert sorted(resumed) == [3, 4, 5, 6, 7]
    assert [resumed[s] for s in range(3, 8)] == [whole[s] for s in range(3, 8)]
    assert [resumed[s] for s in range(3, 6)] != [whole[s] for s in range(3)]


def test_a_csv_of_paths_and_labels_packs_as_the_folder_does(folder: Path, tmp_path: Path) -> None:
    rows = ["path,label,split"] + [
        f"{f.relative_to(folder.parent).as_posix()},{f.parent.name},{f.parts[-3]}"
        for f in sorted(folder.rglob("*.png"))
        if f.name != "broken.png"
    ]
    listing = folder.parent / "images.csv"
    listing.write_text("\n".join(rows) + "\n")
    assert cli_main(["pack", str(listing), "--out", str(tmp_path / "from_csv")]) == 0
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "from_folder")]) == 0
    info = {
        k: json.loads((tmp_path / k / "moderncnn.json").read_text())
        for k in ("from_csv", "from_folder")
    }
    assert info["from_csv"]["class_names"] == info["from_folder"]["class_names"]
    assert info["from_csv"]["images"]["train"] == 48 and info["from_csv"]["images"]["val"] == 16

    def labels(packed: str) -> list[int]:
        data = StreamingDataModule(str(tmp_path / packed), **STATS)
        return sorted(int(y) for _, ys in data.val_dataloader() for y in ys)

    assert labels("from_csv") == labels("from_folder")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("file,class\na.png,x\n", "columns path,label"),
        ("path,label\nmissing.png,x\n", "images.csv:2: image file 'missing.png' not found"),
        (
            "path,label,split\nimages/val/c0/000.png,c0,holdout\n",
            "split must be train, val or test",
        ),
        ("", "columns path,label"),
    ],
)
def test_a_bad_csv_is_one_line_naming_the_row(
    folder: Path, tmp_path: Path, capsys, text: str, says: str
) -> None:
    listing = folder.parent / "images.csv"
    listing.write_text(text)
    assert cli_main(["pack", str(listing), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and says in error, error
    assert not (tmp_path / "out").exists()


def test_features_from_a_packed_config_equal_the_folders(folder: Path, tmp_path: Path) -> None:
    """`features --config` with a StreamingDataModule: the packed images give the features
    their folder gives (same preprocessing), and repacking other images invalidates the cache."""
    from moderncnn.transfer import FeatureCache

    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0
    tiny = '{"channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]}'
    caches = {}
    for name, data in (
        ("packed", {"class_path": "moderncnn.data.StreamingDataModule",
                    "init_args": {"input_dir": str(tmp_path / "packed"), **STATS}}),
        ("folder", {"class_path": "moderncnn.data.ImageFolderDataModule",
                    "init_args": {"root": str(folder), **STATS}}),
    ):  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"data": data}))
        argv = ["features", "--backbone", "resnet18_cifar", "--model-kwargs", tiny,
                "--runtime", "torch", "--config", str(tmp_path / f"{name}.yaml"),
                "--out", str(tmp_path / name)]  # fmt: skip
        assert cli_main(argv) == 0
        caches[name] = FeatureCache(tmp_path / name)
    for split in ("train", "val"):
        packed, folder_ = caches["packed"], caches["folder"]
        assert packed.features(split).shape == folder_.features(split).shape

        # litdata reads a split in packing order: sort both by (label, feature sum) to compare
        def rows(cache, split=split):
            labels, sums = cache.labels(split).tolist(), cache.features(split).sum(1).tolist()
            return sorted(zip(labels, sums, strict=True))

        for (la, fa), (lb, fb) in zip(rows(packed), rows(folder_), strict=True):
            assert la == lb and abs(fa - fb) <= 1e-4 * max(1.0, abs(fb))
    key = json.loads((tmp_path / "packed" / "manifest.json").read_text())["key"]
    (folder / "train" / "c0" / "000.png").unlink()  # other images, packed again
    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0
    assert (
        cli_main(
            argv[:-2]
            + ["--config", str(tmp_path / "packed.yaml"), "--out", str(tmp_path / "packed_cache")]
        )
        == 0
    )
    assert json.loads((tmp_path / "packed_cache" / "manifest.json").read_text())["key"] != key


@pytest.mark.parametrize("in_chans", [3, 1])
def test_features_of_a_packed_folder_equal_its_image_folders(
    folder: Path, tmp_path: Path, in_chans: int
) -> None:
    """`features --data PACKED/` reads the chunks with the backbone's own preprocessing: the
    same features, labels and order as `--data FOLDER/` (an RGB folder into a grey model too)."""
    from moderncnn.transfer import FeatureCache

    assert cli_main(["pack", str(folder), "--out", str(tmp_path / "packed")]) == 0
    tiny = json.dumps({"channels": [8, 8, 8, 8], "layers": [1] * 4, "in_chans": in_chans})
    for name, data in (("from_packed", tmp_path / "packed"), ("from_folder", folder)):
        argv = ["features", "--backbone", "resnet18_cifar", "--model-kwargs", tiny,
                "--runtime", "torch", "--data", str(data),
                "--out", str(tmp_path / name)]  # fmt: skip
        assert cli_main(argv) == 0
    packed, images = FeatureCache(tmp_path / "from_packed"), FeatureCache(tmp_path / "from_folder")
    for split in ("train", "val"):
        assert packed.labels(split).tolist() == images.labels(split).tolist()
        assert (packed.features(split) - images.features(split)).abs().max() <= 1e-5
    assert packed.manifest["meta"]["source"] == str((tmp_path / "packed").resolve())
