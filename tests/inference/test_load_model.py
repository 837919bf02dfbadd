"""One trained model, one card: every artifact we write loads through load_model and agrees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import moderncnn
from moderncnn.cli import main as cli_main
from moderncnn.data.idx import read_idx
from moderncnn.data.images import load_image
from moderncnn.inference import load_model, predict, save_model
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import DataError, MissingFileError
from moderncnn.training.module import ImageClassifier
from moderncnn.transfer import extract_features, train_probe

TINY = {"channels": [8, 16], "layers": [1, 1]}
NAMES = [f"class{i}" for i in range(10)]
GREY28 = {"image_size": 28, "resize_size": None, "mean": [0.286], "std": [0.353]}


def calibrated(module: nn.Module) -> nn.Module:
    """Batch-norm statistics of real-looking activations, so folding them is not a no-op."""
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(8, 1, 28, 28))
    return module.eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A 10-class, 1-channel ImageClassifier checkpoint of non-default widths."""
    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY, class_names=NAMES,
        preprocess=GREY28,
    )  # fmt: skip
    calibrated(module.model)
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)  # what Lightning calls while saving: adds model_card
    torch.save(saved, tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt"


@pytest.fixture
def grey_folder(tmp_path: Path) -> Path:
    """Two class folders of 28 x 28 grey PNGs (random pixels)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "grey" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "grey" / label / f"{i}.png")
    return tmp_path / "grey"


def top1(predictions) -> list[tuple[str, float]]:
    return [(p.classes[0], p.probabilities[0]) for p in predictions]


def assert_same_predictions(a, b) -> None:
    assert [c for c, _ in top1(a)] == [c for c, _ in top1(b)]
    np.testing.assert_allclose([q for _, q in top1(a)], [q for _, q in top1(b)], atol=1e-4)


def test_card_round_trips_through_json_and_names_bad_files() -> None:
    parent = ModelCard("resnet18_cifar", 0, 1, TINY, kind="backbone", source={"weights": "x.pth"})
    card = ModelCard(
        "linear_probe", 2, 1, class_names=("a", "b"), preprocess=Preprocess.from_dict(GREY28),
        kind="probe", parent=parent, head={"num_features": 16, "hidden": None, "stage": None},
    )  # fmt: skip
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.parent.model_kwargs == TINY
    # The trained weights are in the file: a weights source never enters a card.
    assert (
        "weights" not in ModelCard("resnet18", 5, model_kwargs={"weights": "imagenet"}).model_kwargs
    )
    with pytest.raises(DataError, match=r"probe\.json: the model card has no 'architecture'"):
        ModelCard.from_dict({"num_classes": 3}, "probe.json")
    with pytest.raises(DataError, match="config.json: card format 'other/2'"):
        ModelCard.from_dict({**card.to_dict(), "format": "other/2"}, "config.json")
    with pytest.raises(DataError, match="3 class names for 2 classes"):
        ModelCard("resnet18", 2, class_names=("a", "b", "c"))


def test_five_artifact_kinds_load_with_identical_predictions(
    checkpoint: Path, grey_folder: Path, tmp_path: Path
) -> None:
    from_ckpt = load_model(checkpoint)
    assert from_ckpt.card.architecture == "resnet18_cifar" and from_ckpt.card.model_kwargs == TINY
    assert from_ckpt.card.class_names == tuple(NAMES) and from_ckpt.card.in_chans == 1
    expected = from_ckpt.predict(grey_folder, topk=3)
    assert len(expected) == 12 and all(p.error is None for p in expected)

    saved = save_model(from_ckpt, tmp_path / "saved")
    assert json.loads((saved / "config.json").read_text())["architecture"] == "resnet18_cifar"
    assert (
        cli_main(
            [
                "export",
                "--model",
                str(checkpoint),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    scripted = tmp_path / "m.torchscript"
    argv = ["export", "--model", str(checkpoint), "--format", "torchscript", "--out", str(scripted)]
    assert cli_main([*argv, "--dynamic_batch"]) == 0
    for artifact in (saved, tmp_path / "m.onnx", tmp_path / "m.torchscript"):
        loaded = load_model(artifact)
        assert loaded.card.class_names == from_ckpt.card.class_names
        assert loaded.card.preprocess == from_ckpt.card.preprocess
        assert_same_predictions(loaded.predict(grey_folder, topk=3), expected)

    # The fifth kind: a probe folder (features of this checkpoint's backbone + a linear head).
    cache = extract_features(
        None, grey_folder, tmp_path / "cache", weights=checkpoint, progress=False
    )
    train_probe(cache, epochs=5, val_fraction=0.0, out=tmp_path / "probe")
    probe = load_model(tmp_path / "probe")
    assert probe.card.kind == "probe" and probe.card.parent.model_kwargs == TINY
    by_probe = probe.predict(grey_folder, topk=2)
    save_model(probe, tmp_path / "probe_saved")
    assert_same_predictions(
        load_model(tmp_path / "probe_saved").predict(grey_folder, topk=2), by_probe
    )
    argv = ["export", "--model", str(tmp_path / "probe"), "--format", "onnx", "--dynamic_batch"]
    assert cli_main(argv) == 0
    assert_same_predictions(
        load_model(tmp_path / "probe" / "model.onnx").predict(grey_folder), by_probe
    )
    # A second call of everything gives the same again.
    assert_same_predictions(load_model(checkpoint).predict(grey_folder, topk=3), expected)


def test_features_probe_predict_from_a_10_class_checkpoint_on_the_command_line(
    checkpoint: Path, grey_folder: Path, tmp_path: Path, capsys
) -> None:
    cache, probe = tmp_path / "cache", tmp_path / "probe"
    assert (
        cli_main(
            [
                "features",
                "--model",
                str(checkpoint),
                "--data",
                str(grey_folder),
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    manifest = json.loads((cache / "manifest.json").read_text())
    backbone = manifest["meta"]["card"]
    # The checkpoint's own architecture settings and normalisation, not the defaults.
    assert backbone["model_kwargs"] == TINY and backbone["preprocess"]["mean"] == [0.286]
    assert backbone["num_classes"] == 0 and manifest["meta"]["num_features"] == 16
    assert cli_main(["probe", str(cache), "--epochs", "5", "--out", str(probe)]) == 0
    assert cli_main(["predict", "--model", str(probe), str(grey_folder)]) == 0
    assert "12 images classified, 0 unreadable" in capsys.readouterr().out


def test_features_probe_predict_from_a_pth_of_non_default_widths(
    grey_folder: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "narrow.pth"
    net = calibrated(moderncnn.create_model("resnet18_cifar", num_classes=10, in_chans=1, **TINY))
    torch.save(net.state_dict(), weights)
    kwargs = {**TINY, "in_chans": 1}
    cache = extract_features(
        "resnet18_cifar", grey_folder, tmp_path / "c", weights=weights, model_kwargs=kwargs,
        progress=False,
    )  # fmt: skip
    result = train_probe(cache, epochs=5, val_fraction=0.0, out=tmp_path / "probe")
    predictions = predict(grey_folder, tmp_path / "probe", topk=1)
    expected = result.head(cache.features("all")).argmax(1).tolist()
    by_file = {Path(p.file).relative_to(grey_folder).as_posix(): p.classes[0] for p in predictions}
    assert [by_file[f] for f in cache.files("all")] == [cache.class_names[i] for i in expected]


def test_rerun_reuses_the_cache_without_building_the_backbone(
    checkpoint: Path, grey_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = extract_features(None, grey_folder, tmp_path / "c", weights=checkpoint, progress=False)

    def no_build(*args, **kwargs):
        raise AssertionError("the backbone was built although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr("moderncnn.inference.loading.build_network", no_build)
        patch.setattr("moderncnn.transfer.backbones.create_model", no_build)
        again = extract_features(
            None, grey_folder, tmp_path / "c", weights=checkpoint, progress=False
        )
    assert again.key == first.key
    # Other pixels, same size and modification time (what `cp -p` or `rsync -t` leave): noticed.
    image = grey_folder / "a" / "0.png"
    stat = image.stat()
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = extract_features(
        None, grey_folder, tmp_path / "c", weights=checkpoint, progress=False
    )
    assert changed.key != first.key


def test_export_of_a_fine_tuned_checkpoint_works_offline_without_its_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = tmp_path / "pretrained.safetensors"
    save_file(moderncnn.create_model("resnet18_cifar", **TINY).state_dict(), str(start))
    module = ImageClassifier(
        "resnet18_cifar", num_classes=3, model_kwargs={**TINY, "weights": str(start)},
        preprocess={"image_size": 32, "resize_size": None, "mean": [0.5] * 3, "std": [0.25] * 3},
    )  # fmt: skip
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    torch.save(saved, tmp_path / "ft.ckpt")
    start.unlink()

    def offline(*args, **kwargs):
        raise AssertionError("export opened a network connection")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr("moderncnn.io.download.urlopen", offline)
    assert cli_main(["export", "--model", str(tmp_path / "ft.ckpt"), "--format", "onnx"]) == 0
    card = json.loads((tmp_path / "ft.onnx.json").read_text())["card"]
    assert "weights" not in card["model_kwargs"] and card["model_kwargs"] == TINY
    assert card["preprocess"]["resize_size"] is None and card["preprocess"]["image_size"] == 32


def test_loading_never_downloads_named_weights(
    grey_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    pre = Preprocess.for_size(224, [0.5] * 3, [0.2] * 3)
    parent = ModelCard(
        "resnet18", 0, 3, kind="backbone", preprocess=pre, source={"weights": "imagenet"}
    )
    card = ModelCard(
        "linear_probe", 2, 3, class_names=("a", "b"), preprocess=parent.preprocess, kind="probe",
        parent=parent, head={"num_features": 512, "hidden": None, "stage": None},
    )  # fmt: skip
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.json").write_text(json.dumps({"card": card.to_dict()}))
    head = moderncnn.inference.probe.ProbeHead(512, 2)
    save_file(head.state_dict(), str(probe / "probe_head.safetensors"))
    with pytest.raises(MissingFileError, match=r"resnet18-f37072fd\.pth.*never downloads"):
        load_model(probe)


def test_grey_image_files_are_prepared_exactly_as_the_training_data(
    fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    images = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")[:8]
    preprocess = Preprocess.from_dict(GREY28)
    for i, pixels in enumerate(np.asarray(images)):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        # load_image decodes to RGB, as for every file; the card's transform makes it grey again.
        prepared = preprocess.transform()(load_image(tmp_path / f"{i}.png"))
        expected = (torch.from_numpy(pixels).float()[None] / 255 - 0.286) / 0.353
        torch.testing.assert_close(prepared, expected, rtol=0, atol=1e-6)


def test_a_class_named_train_is_a_class_unless_the_root_holds_only_splits(tmp_path: Path) -> None:
    from moderncnn.data import ImageFolderDataModule
    from moderncnn.data.files import read_folder

    rng = np.random.default_rng(0)

    def images(folder: Path, n: int = 3) -> None:
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                folder / f"{i}.png"
            )

    mixed = tmp_path / "cifar100ish"
    for name in ("train", "tulip", "test"):
        images(mixed / name)
    names, splits = read_folder(mixed)
    assert names == ["test", "train", "tulip"] and [s.name for s in splits] == ["all"]
    data = ImageFolderDataModule(str(mixed), image_size=8)
    assert data.class_names == names

    split = tmp_path / "split"
    for top in ("train", "val", "test"):
        for name in ("cat", "dog"):
            images(split / top / name)
    names, splits = read_folder(split)
    assert names == ["cat", "dog"] and [s.name for s in splits] == ["train", "val", "test"]
    data = ImageFolderDataModule(str(split), image_size=8)
    data.setup("fit")
    assert data.class_names == names
    sizes = {s.name: len(s.files) for s in splits}
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (
        sizes["train"], sizes["val"], sizes["test"],
    )  # fmt: skip


def test_package_root_names_are_the_functions_every_time() -> None:
    import importlib

    from moderncnn import summary

    importlib.import_module("moderncnn.models.layer_table")
    from moderncnn.transfer import predict as transfer_predict

    assert callable(summary) and callable(moderncnn.summary) and moderncnn.summary is summary
    assert callable(transfer_predict) and transfer_predict is moderncnn.inference.predict
    for name in moderncnn.__all__:
        assert not isinstance(getattr(moderncnn, name), type(moderncnn)), name


def test_load_from_checkpoint_never_runs_pickled_code(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = ImageClassifier.load_from_checkpoint(checkpoint)
    assert module.card == load_model(checkpoint).card.replace(source={})

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(DataError, match="pickled Python objects"):
        ImageClassifier.load_from_checkpoint(evil)
    assert not (tmp_path / "ran").exists()


def test_a_missing_artifact_and_a_broken_card_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert cli_main(["predict", "--model", str(tmp_path / "nope.ckpt"), str(tmp_path)]) == 1
    assert "nope.ckpt' does not exist" in capsys.readouterr().err
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text('{"architecture": 3}')
    shutil.copy(tmp_path / "saved" / "config.json", tmp_path / "saved" / "model.safetensors")
    assert cli_main(["predict", "--model", str(tmp_path / "saved"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "Traceback" not in err


def test_a_file_named_and_inside_a_named_folder_is_classified_once(
    checkpoint: Path, grey_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 24: `moderncnn predict a/0.png grey/` classified a/0.png twice.
    monkeypatch.chdir(grey_folder.parent)
    named = Path("grey") / "b" / "3.png"
    inputs = [named, grey_folder, "./grey/a/../a/0.png"]
    files = [p.file for p in predict(inputs, checkpoint, topk=1)]
    assert len(files) == 12 == len(set(files))  # each of the 12 images once
    assert Path(files[0]) == named  # in first-seen order, as given


def test_a_probe_folder_runs_its_own_onnx_export_and_names_the_fix_for_a_moved_backbone(
    checkpoint: Path, grey_folder: Path, tmp_path: Path
) -> None:
    # Issue 24: predict left model.<hash>.onnx beside an exported model.onnx, and a probe whose
    # backbone checkpoint moved said only "the file is gone".
    pytest.importorskip("onnxruntime")
    cache = extract_features(
        None, grey_folder, tmp_path / "cache", weights=checkpoint, progress=False
    )
    probe = tmp_path / "probe"
    train_probe(cache, epochs=5, val_fraction=0.0, out=probe)
    argv = ["export", "--model", str(probe), "--format", "onnx", "--dynamic_batch"]
    assert cli_main(argv) == 0
    by_torch = predict(grey_folder, probe, runtime="torch")
    by_onnx = predict(grey_folder, probe, runtime="onnxruntime")
    assert [p.classes[0] for p in by_onnx] == [p.classes[0] for p in by_torch]
    assert sorted(f.name for f in probe.glob("*.onnx")) == ["model.onnx"]

    moved = tmp_path / "elsewhere.ckpt"
    checkpoint.rename(moved)
    with pytest.raises(
        MissingFileError, match=r"moved or deleted.*moderncnn export .*probe --format safetensors"
    ):
        load_model(probe).predict(grey_folder)
    moved.rename(checkpoint)  # put back: the export makes a copy that no longer needs it
    assert (
        cli_main(
            [
                "export",
                "--model",
                str(probe),
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "own"),
            ]
        )
        == 0
    )
    checkpoint.unlink()
    assert len(load_model(tmp_path / "own").predict(grey_folder)) == 12
