"""Linear probe on real Fashion-MNIST features; prediction from a probe folder."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from moderncnn.cli import main as cli_main
from moderncnn.data import FashionMNISTDataModule
from moderncnn.inference import predict
from moderncnn.models import create_model
from moderncnn.transfer import load_probe, train_probe
from moderncnn.transfer.features import extract_features


def test_probe_on_fashion_mnist_pixels_beats_chance(fashion_mnist_dir: Path, tmp_path) -> None:
    # Raw pixels as features (nn.Flatten as the backbone): 1,500 real training images.
    data = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), train_subset=2000, val_size=500)
    out = tmp_path / "cache"
    cache = extract_features(nn.Flatten(), data, out, batch_size=2000, progress=False)
    assert cache.splits == ["train", "val", "test"] and cache.num_features == 784
    assert len(cache.labels("test")) == 10_000
    result = train_probe(cache, epochs=40, out=tmp_path / "probe")
    test = result.metrics["test"]
    assert test["accuracy"] >= 0.70  # chance: 0.10; a linear probe on pixels gets ~0.80
    assert test["top5_accuracy"] > test["accuracy"]
    assert set(test["per_class_accuracy"]) == set(data.class_names)
    assert sum(map(sum, test["confusion_matrix"])) == 10_000
    assert (tmp_path / "probe" / "confusion_matrix.png").stat().st_size > 10_000

    head, card = load_probe(tmp_path / "probe")
    with torch.no_grad():
        torch.testing.assert_close(head(cache.features("val")), result.head(cache.features("val")))
    assert card.preprocess.mean == (0.286,)  # Fashion-MNIST's normalisation
    assert card.kind == "probe" and card.parent.kind == "backbone" and card.in_chans == 1


def test_probe_default_fits_a_small_folder_and_warns_when_underfit(
    fashion_mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    # Issue 24: about 40 real images per class; the old default (AdamW, 100 epochs of 2 steps
    # at lr 1e-3) underfits, train accuracy level with val; 1,000 epochs is the reference.
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 64, 5, stride=2), nn.ReLU(), nn.Conv2d(64, 128, 3, stride=2), nn.ReLU()
    )
    data = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), train_subset=500, val_size=100)
    cache = extract_features(backbone, data, tmp_path / "c", batch_size=1000, progress=False)
    with pytest.warns(UserWarning, match="may underfit: train accuracy"):
        old = train_probe(cache, epochs=100, lr=1e-3).metrics  # explicit choices still count
    reference = train_probe(cache, epochs=1000).metrics
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fitted probe does not warn
        new = train_probe(cache, out=tmp_path / "probe").metrics
    assert new["val"]["accuracy"] >= reference["val"]["accuracy"]
    assert new["test"]["accuracy"] >= reference["test"]["accuracy"]
    assert new["test"]["accuracy"] >= old["test"]["accuracy"] + 0.03
    assert new["train"]["accuracy"] > new["val"]["accuracy"] + 0.1  # it fits the training set
    config = json.loads((tmp_path / "probe" / "probe.json").read_text())["config"]
    assert config["solver"] == "lbfgs" and config["weight_decay"] == pytest.approx(4 / 400)
    assert cli_main(["probe", str(tmp_path / "c"), "--epochs", "100", "--lr", "1e-3"]) == 0
    printed = capsys.readouterr().err  # one line, no source line of ours
    assert "warning: the probe may underfit" in printed and "UserWarning" not in printed


def test_probe_cli_with_mlp(cifar_folder: Path, tmp_path: Path, capsys) -> None:
    cache = extract_features(nn.Conv2d(3, 16, 3), cifar_folder, tmp_path / "c", progress=False)
    assert cli_main(["probe", str(tmp_path / "c"), "--mlp", "32", "--epochs", "5"]) == 0
    printed = capsys.readouterr().out
    assert "train: accuracy" in printed and "val: accuracy" in printed
    info = json.loads((tmp_path / "c" / "probe" / "probe.json").read_text())
    assert info["config"]["hidden"] == 32 and info["card"]["class_names"] == cache.class_names
    assert info["config"]["solver"] == "adamw" and info["config"]["epochs"] == 5
    assert info["card"]["architecture"] == "mlp_probe" and info["card"]["head"]["hidden"] == 32


@pytest.fixture
def probe_dir(cifar_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A probe on resnet18_cifar features, the backbone's weights in a file."""
    weights = tmp_path / "backbone.safetensors"
    save_file(create_model("resnet18_cifar").state_dict(), str(weights))
    cache = extract_features(
        "resnet18_cifar", cifar_folder, tmp_path / "cache", weights=str(weights), progress=False
    )
    train_probe(cache, epochs=50, val_fraction=0.1, out=tmp_path / "probe")
    return tmp_path / "probe", tmp_path / "cache"


def test_predict_reports_broken_files_and_classifies_the_rest(
    probe_dir, cifar_folder: Path, tmp_path: Path
) -> None:
    probe, cache_dir = probe_dir
    broken = cifar_folder / "class3" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    predictions = predict(cifar_folder, probe, topk=3, batch_size=8)
    assert len(predictions) == 21
    failed = [p for p in predictions if p.error is not None]
    assert [Path(p.file).name for p in failed] == ["broken.jpg"] and not failed[0].classes
    good = [p for p in predictions if p.error is None]
    assert all(len(p.classes) == 3 and p.probabilities[0] >= p.probabilities[1] for p in good)
    # The rebuilt backbone and transform give the features the probe was trained on.
    head, card = load_probe(probe)
    from moderncnn.transfer.cache import FeatureCache

    cache = FeatureCache(cache_dir)
    expected = head(cache.features("all")).argmax(1).tolist()
    by_file = {Path(p.file).relative_to(cifar_folder).as_posix(): p.classes[0] for p in good}
    assert [by_file[f] for f in cache.files("all")] == [card.class_names[i] for i in expected]
    correct = sum(p.classes[0] == Path(p.file).parent.name for p in good)
    assert correct >= 15  # 18 of the 20 images trained the probe


def test_predict_cli_writes_csv_and_json(probe_dir, cifar_folder: Path, tmp_path: Path) -> None:
    probe, _ = probe_dir
    files = sorted(cifar_folder.rglob("*.png"))[:3]
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    missing = tmp_path / "missing.png"
    argv = ["predict", "--model", str(probe), *map(str, files), str(missing)]
    assert cli_main([*argv, "--topk", "2", "--out", str(out_csv), str(out_json)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 * 2 + 1 and rows[0]["rank"] == "1"
    assert [r["file"] for r in rows if r["error"]] == [str(missing)]
    saved = json.loads(out_json.read_text())
    assert len(saved) == 4 and saved[0]["classes"][0] == rows[0]["class"]


def test_predict_refuses_an_unrebuildable_backbone(cifar_folder: Path, tmp_path: Path) -> None:
    cache = extract_features("resnet18_cifar", cifar_folder, tmp_path / "c", progress=False)
    train_probe(cache, epochs=2, out=tmp_path / "probe")
    with pytest.raises(
        ValueError, match=r"random initial weights \(weights=None\).*backbone=module"
    ):
        predict(cifar_folder, tmp_path / "probe")


def test_predict_with_a_lightning_checkpoint(cifar_folder: Path, tmp_path: Path) -> None:
    import lightning.pytorch as L

    from moderncnn.data import ImageFolderDataModule
    from moderncnn.io.card import Preprocess
    from moderncnn.training.module import ImageClassifier

    data = ImageFolderDataModule(str(cifar_folder), val_fraction=0.0, image_size=32, batch_size=4)
    module = ImageClassifier("resnet18_cifar", num_classes=data.num_classes, scheduler="none")
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, **quiet)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    (cifar_folder / "class5" / "empty.png").write_bytes(b"")

    predictions = predict(cifar_folder, tmp_path / "run.ckpt", topk=2)
    assert [Path(p.file).name for p in predictions if p.error] == ["empty.png"]
    good = [p for p in predictions if p.error is None]
    assert len(good) == 20
    # Same class and probability as the trained module on the module's own eval transform.
    from moderncnn.data.images import load_image

    preprocess = Preprocess.from_dict(module.hparams.preprocess)
    assert preprocess.resize_size == data.resize_size
    images = torch.stack([data.eval_transform(load_image(p.file)) for p in good])
    with torch.no_grad():
        probs = module.eval()(images).softmax(1)
    assert [p.classes[0] for p in good] == [data.class_names[i] for i in probs.argmax(1)]
    torch.testing.assert_close(torch.tensor([p.probabilities[0] for p in good]), probs.amax(1))
