"""Feature cache: reused if nothing changed, rebuilt if an image did, never read half-written."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from moderncnn.cli import main as cli_main
from moderncnn.data.files import read_folder
from moderncnn.io.card import Preprocess
from moderncnn.transfer.cache import CacheInvalidError, FeatureCache, write_cache
from moderncnn.transfer.features import extract_features


class CountingBackbone(nn.Module):
    """A tiny conv net (any nn.Module works) that counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.relu(self.conv(x))  # N x 6 x H x W: pooled by extract_features


def test_cache_reused_and_invalidated(cifar_folder: Path, tmp_path: Path) -> None:
    net, out = CountingBackbone(), tmp_path / "cache"

    def run() -> FeatureCache:
        return extract_features(net, cifar_folder, out, batch_size=8, image_size=32, progress=False)

    first = run()
    assert net.calls == 3 and first.features("all").shape == (20, 6)
    assert first.class_names == sorted({p.parent.name for p in cifar_folder.rglob("*.png")})
    run()
    assert net.calls == 3  # same backbone, weights, transform and files: the backbone never ran

    image = next(cifar_folder.rglob("*.png"))
    Image.open(image).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(image)  # changed pixels
    changed = run()
    assert net.calls == 6
    row = changed.files("all").index(image.relative_to(cifar_folder).as_posix())
    assert not torch.equal(changed.features("all")[row], first.features("all")[row])

    image.unlink()
    assert len(run().labels("all")) == 19 and net.calls == 9
    with torch.no_grad():
        net.conv.bias += 1  # other weights: other features
    run()
    assert net.calls == 12


def test_features_of_a_moderncnn_model_and_a_stage(cifar_folder: Path, tmp_path: Path) -> None:
    from moderncnn import create_model

    model = create_model("resnet18_cifar", num_classes=10).eval()
    cache = extract_features(model, cifar_folder, tmp_path / "c", progress=False)
    preprocess = Preprocess.from_dict(cache.meta["preprocess"])
    assert preprocess == Preprocess(32, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # Row 0 is the first file; recompute its pre-logits features by hand.
    from moderncnn.data.images import load_image

    x = preprocess.transform()(load_image(cifar_folder / cache.files("all")[0]))[None]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)[0]
    torch.testing.assert_close(cache.features("all")[0], expected, rtol=2e-3, atol=2e-3)
    assert cache.num_features == 512

    staged = extract_features(model, cifar_folder, tmp_path / "s", stage=2, progress=False)
    assert staged.features("all").shape == (20, model.feature_info[2].num_chs)
    with pytest.raises(ValueError, match="stage must be in 0..3"):
        extract_features(model, cifar_folder, tmp_path / "x", stage=7, progress=False)


def test_broken_image_is_skipped_and_reported(cifar_folder: Path, tmp_path: Path) -> None:
    (cifar_folder / "class3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cache = extract_features(CountingBackbone(), cifar_folder, tmp_path / "c", progress=False)
    assert len(cache.labels("all")) == 20
    assert [s["file"] for s in cache.skipped("all")] == ["class3/broken.png"]
    assert "class3/broken.png" not in cache.files("all")


def test_split_folders(cifar_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "splits"
    for image in sorted(cifar_folder.rglob("*.png")):
        split = "val" if int(image.stem.split("_")[1]) % 4 == 0 else "train"
        target = root / split / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    classes, splits = read_folder(root)
    assert [s.name for s in splits] == ["train", "val"]
    assert sum(len(s.files) for s in splits) == 20 and len(classes) == 8


def _tiny_cache(root: Path, key: str, value: float, rows: int = 64) -> None:
    features = torch.full((rows, 32), value, dtype=torch.float16)
    labels, files = torch.zeros(rows, dtype=torch.long), [f"{i}.png" for i in range(rows)]
    split = {"features": features, "labels": labels, "files": files, "skipped": []}
    write_cache(root, key, {"num_features": 32}, ["a"], {"train": split, "test": dict(split)})


def test_truncated_or_unlisted_files_are_refused(tmp_path: Path) -> None:
    _tiny_cache(tmp_path, "k", 1.0)
    assert FeatureCache.open_if_valid(tmp_path, "k") is not None
    assert FeatureCache.open_if_valid(tmp_path, "other key") is None
    data = (tmp_path / "test-00000.safetensors").read_bytes()
    (tmp_path / "test-00000.safetensors").write_bytes(data[:-10])
    with pytest.raises(CacheInvalidError, match="test-00000.safetensors does not match"):
        FeatureCache(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CacheInvalidError, match="no manifest.json"):
        FeatureCache(tmp_path)


def _write_forever(root: str) -> None:
    """Child process: rewrite a big cache again and again, each with its own key and value."""
    for i in range(1, 10_000):
        _tiny_cache(Path(root), f"key{i}", float(i), rows=20_000)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_writer_killed_at_any_time_leaves_nothing_half_read(tmp_path: Path, delay) -> None:
    _tiny_cache(tmp_path, "key0", 0.0)
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_write_forever, args=(str(tmp_path),))
    child.start()
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    try:
        cache = FeatureCache(tmp_path)
    except CacheInvalidError:
        return  # killed mid-write: refused
    # Killed between two writes: then what is read is one complete, consistent write.
    value = float(cache.key.removeprefix("key"))
    for split in cache.splits:
        assert torch.all(cache.features(split) == value)


def _write_until_manifest(root: str, ready) -> None:
    """Child process: write a new cache over the old one, stop just before its manifest."""
    from moderncnn.transfer import cache

    write_json = cache._write_json

    def stall_at_manifest(path: Path, value) -> None:
        if path.name == cache.MANIFEST:
            ready.set()
            time.sleep(60)
        write_json(path, value)

    cache._write_json = stall_at_manifest
    _tiny_cache(Path(root), "new", 2.0)


def test_writer_killed_before_manifest_invalidates_old_cache(tmp_path: Path) -> None:
    _tiny_cache(tmp_path, "old", 1.0)
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    child = fork.Process(target=_write_until_manifest, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    # The split files are the new ones, the manifest gone: neither old nor new is valid.
    assert FeatureCache.open_if_valid(tmp_path, "old") is None
    assert FeatureCache.open_if_valid(tmp_path, "new") is None
    _tiny_cache(tmp_path, "again", 3.0)  # a later run rebuilds it and cleans up
    assert FeatureCache(tmp_path).key == "again"
    assert not list(tmp_path.glob(".*.tmp"))


def test_features_cli(cifar_folder: Path, tmp_path: Path, capsys) -> None:
    argv = ["features", "--arch", "resnet18_cifar", "--data", str(cifar_folder)]
    assert cli_main([*argv, "--out", str(tmp_path / "c"), "--batch_size", "10"]) == 0
    assert "all: 20 images x" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["meta"]["backbone"] == argv[2] and manifest["meta"]["weights"] is None


def test_image_folder_datamodule_features_are_not_augmented(cifar_folder: Path, tmp_path) -> None:
    from moderncnn.data import ImageFolderDataModule

    net = CountingBackbone()

    def features(out: str) -> FeatureCache:
        data = ImageFolderDataModule(str(cifar_folder), val_fraction=0.2, image_size=32)
        return extract_features(net, data, tmp_path / out, progress=False)

    torch.manual_seed(0)
    first = features("a")
    assert first.splits == ["train", "val"]
    assert len(first.files("train")) + len(first.files("val")) == 20
    assert first.meta["preprocess"]["resize_size"] == 37  # the module's own eval recipe
    torch.manual_seed(1)  # other random crops and flips, were the train split augmented
    second = features("b")
    assert torch.equal(first.features("train"), second.features("train"))


def test_half_storage_is_refused_when_it_would_distort(cifar_folder: Path, tmp_path) -> None:
    net = CountingBackbone()
    half = extract_features(net, cifar_folder, tmp_path / "h", half=True, progress=False)
    full = extract_features(net, cifar_folder, tmp_path / "f", progress=False)
    assert half._split("all")["features"].dtype == torch.float16
    torch.testing.assert_close(half.features("all"), full.features("all"), rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        net.conv.weight *= 1e-9  # activations far below float16's smallest normal number
        net.conv.bias *= 1e-9
    with pytest.raises(ValueError, match="float16 would change these features"):
        extract_features(net, cifar_folder, tmp_path / "t", half=True, progress=False)


def test_cli_reports_offline_weights_as_one_message(
    cifar_folder: Path, tmp_path: Path, torch_home: Path, monkeypatch, capsys
) -> None:
    from moderncnn.io import download

    def offline(*args, **kwargs):
        raise download.URLError("no network")

    monkeypatch.setattr(download, "urlopen", offline)
    argv = ["features", "--arch", "resnet18", "--model", "imagenet"]
    assert cli_main([*argv, "--data", str(cifar_folder), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moderncnn features: error: could not download https://")
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err


def test_features_cli_from_a_training_config(cifar_folder: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text(
        "trainer:\n  max_epochs: 1\n"  # the other sections of a training config are ignored
        "data:\n  class_path: ImageFolderDataModule\n"
        f"  init_args:\n    root: {cifar_folder}\n    image_size: 32\n    val_fraction: 0.25\n"
    )
    argv = ["features", "--arch", "resnet18_cifar", "--config", str(config)]
    assert cli_main([*argv, "--out", str(tmp_path / "c")]) == 0
    cache = FeatureCache(tmp_path / "c")
    assert cache.splits == ["train", "val"] and cache.num_features == 512
    assert len(cache.labels("train")) + len(cache.labels("val")) == 20
    assert cache.meta["source"] == "ImageFolderDataModule"


def test_bf16_features_are_close_keyed_apart_and_default_batches_by_size(
    cifar_folder: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = CountingBackbone()
    fp32 = extract_features(net, cifar_folder, tmp_path / "a", image_size=32, progress=False)
    assert net.calls == 1  # 20 images at 32 px: the default batch is 64 on a CPU
    bf16 = extract_features(
        net, cifar_folder, tmp_path / "b", image_size=32, bf16=True, progress=False
    )
    assert bf16.features("all").dtype == torch.float32
    assert bf16.meta["compute"] == "bfloat16-autocast" and fp32.meta["compute"] == "float32"
    torch.testing.assert_close(bf16.features("all"), fp32.features("all"), rtol=0.05, atol=0.02)
    assert not torch.equal(bf16.features("all"), fp32.features("all"))  # really bf16 math
    # 128 px or more on a CPU: batches of 8 (a large map per image overflows the caches)
    extract_features(net, cifar_folder, tmp_path / "c", image_size=128, progress=False)
    assert net.calls == 2 + 3
