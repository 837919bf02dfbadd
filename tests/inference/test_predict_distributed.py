"""`moderncnn predict` on 2 CPU processes (gloo): the rows of each shard written by the process
that classified it, joined into the CSV and JSON that one process writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from moderncnn import create_model
from moderncnn.inference import predict, save_model
from moderncnn.inference.distributed import PredictSettings
from moderncnn.inference.prediction import write_csv, write_json
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = {"channels": [8, 16, 16, 16], "layers": [1, 1, 1, 1]}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    network = create_model("resnet18_cifar", num_classes=5, **TINY)
    preprocess = Preprocess(32, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    card = ModelCard("resnet18_cifar", 5, 3, TINY, tuple("abcde"), preprocess)
    return save_model(network, tmp_path / "saved", card)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """25 random 30 px images and one file that does not decode, in two folders."""
    generator = torch.Generator().manual_seed(0)
    for i in range(25):
        folder = tmp_path / "images" / ("x" if i % 3 else "y")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (30, 30, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:02d}.png")
    (tmp_path / "images" / "x" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "images"


def test_several_processes_need_a_folder_for_their_rows(saved: Path, images: Path) -> None:
    with pytest.raises(ConfigError, match="give parts="):
        predict(images, saved, trainer=PredictSettings(devices=2, accelerator="cpu"))
    with pytest.raises(ConfigError, match="runtime 'onnxruntime' runs in one process"):
        predict(images, saved, runtime="onnxruntime", trainer=PredictSettings(devices=2))


@pytest.mark.slow
def test_two_processes_write_the_predictions_one_process_writes(
    saved: Path, images: Path, tmp_path: Path
) -> None:
    single = predict(images, saved, topk=3, batch_size=4, runtime="torch")
    assert len(single) == 26 and sum(p.error is not None for p in single) == 1
    write_csv(single, tmp_path / "one.csv")
    write_json(single, tmp_path / "one.json")

    out = tmp_path / "two"
    command = [
        sys.executable, "-m", "moderncnn.cli", "predict", "--model", str(saved), str(images),
        "--topk", "3", "--batch_size", "4", "--runtime", "torch",
        "--out", f"{out}.csv", f"{out}.json",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr
    # One shard of 26 files: process 1 has none (the extreme of unequal shares) and must not hang.
    assert done.stdout.count("25 images classified, 1 unreadable") == 1  # process 0 reports

    one, two = (
        json.loads((tmp_path / "one.json").read_text()),
        json.loads(Path(f"{out}.json").read_text()),
    )
    assert [p["file"] for p in two] == [p["file"] for p in one]  # the same order
    assert [p["classes"][:1] for p in two] == [p["classes"][:1] for p in one]  # same top-1
    for a, b in zip(one, two, strict=True):
        assert a["error"] == b["error"]
        torch.testing.assert_close(a["probabilities"], b["probabilities"], rtol=0, atol=1e-5)
    rows = list(csv.reader(Path(f"{out}.csv").open()))
    assert len(rows) == len(list(csv.reader((tmp_path / "one.csv").open())))
    assert not Path(f"{out}.csv.parts").exists()  # the shards' rows are removed once joined
