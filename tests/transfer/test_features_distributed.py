"""Features on several processes and in shards: 2 CPU processes (gloo) make the cache 1 makes,
and a run stopped after a shard resumes with only the missing shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from moderncnn.inference.distributed import ShardBatches, plan_shards
from moderncnn.transfer import features as features_module
from moderncnn.transfer.cache import FeatureCache
from moderncnn.transfer.features import extract_features
from moderncnn.transfer.probe import train_probe

REPO = Path(__file__).resolve().parents[2]
TINY = {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}


@pytest.fixture
def folder(cifar_folder: Path) -> Path:
    """27 files: the 20 CIFAR images, 6 flipped copies and one that does not decode."""
    for image in sorted(cifar_folder.rglob("*.png"))[:6]:
        flipped = Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped.save(image.with_name(f"flip_{image.name}"))
    (cifar_folder / "class3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return cifar_folder


def test_shards_are_split_without_repeats_or_gaps() -> None:
    shards = plan_shards({"train": 10, "val": 3}, 4)
    assert [(s.name, s.start, s.stop) for s in shards] == [
        ("train-00000", 0, 4), ("train-00001", 4, 8), ("train-00002", 8, 10), ("val-00000", 10, 13),
    ]  # fmt: skip
    seen = []
    for rank in range(3):  # unequal shares: 2, 1 and 1 shards
        batches = list(ShardBatches(shards, 3, rank, 3))
        assert len(batches) == len(ShardBatches(shards, 3, rank, 3))
        assert all(
            len({next(s for s in shards if s.start <= i < s.stop) for i in b}) == 1 for b in batches
        )  # a batch never crosses a shard
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(13))  # each image once: no padding, no gap


def _same_cache(a: FeatureCache, b: FeatureCache) -> None:
    assert a.key == b.key and a.splits == b.splits
    assert a.manifest["shards"] == b.manifest["shards"]
    for split in a.splits:
        assert a.files(split) == b.files(split)
        assert torch.equal(a.labels(split), b.labels(split))
        torch.testing.assert_close(a.features(split), b.features(split), rtol=0, atol=1e-5)
        assert a.skipped(split) == b.skipped(split)


@pytest.mark.slow
def test_two_processes_make_the_cache_one_makes(folder: Path, tmp_path: Path) -> None:
    args = {"shard_size": 4, "batch_size": 3, "runtime": "torch", "progress": False}
    single = extract_features("resnet18_cifar", folder, tmp_path / "one", model_kwargs=TINY, **args)
    assert len(single.labels("all")) == 26 and len(single.manifest["shards"]["all"]) == 7

    # As a user runs it: Lightning starts the second process by running the command again.
    command = [
        sys.executable, "-m", "moderncnn.cli", "features", "--arch", "resnet18_cifar",
        "--model_kwargs", json.dumps(TINY), "--data", str(folder), "--out", str(tmp_path / "two"),
        "--shard_size", "4", "--batch_size", "3", "--runtime", "torch",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr
    # Shards 0, 2, 4, 6 (15 images) on process 0, 1, 3, 5 (12) on process 1: unequal, no hang.
    assert done.stdout.count("all: 26 images x 64 features, 1 unreadable files skipped") == 1
    _same_cache(FeatureCache(tmp_path / "two"), single)
    # The probe reads it as any cache: the same features, the same probe.
    two = train_probe(tmp_path / "two", epochs=3).metrics
    one = train_probe(single, epochs=3).metrics
    assert {s: m["accuracy"] for s, m in two.items()} == {s: m["accuracy"] for s, m in one.items()}


class Counting(nn.Module):
    """A tiny backbone that counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.conv(x)


class Stop(Exception):
    pass


def test_a_run_stopped_after_a_shard_resumes_with_the_missing_ones(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Counting()
    args = {"shard_size": 8, "batch_size": 4, "image_size": 28, "progress": False}
    whole = extract_features(net, folder, tmp_path / "whole", **args)
    assert net.images == 26

    written = []
    write_shard = features_module.write_shard

    def stop_after_the_first(root, key, shard, rows) -> None:
        if written:
            raise Stop  # the process dies while the second shard is computed
        write_shard(root, key, shard, rows)
        written.append(shard.name)

    out = tmp_path / "resumed"
    monkeypatch.setattr(features_module, "write_shard", stop_after_the_first)
    with pytest.raises(Stop):
        extract_features(net, folder, out, **args)
    assert written == ["all-00000"] and not (out / "manifest.json").exists()
    monkeypatch.setattr(features_module, "write_shard", write_shard)

    # A shard cut short (a copy, say) is not kept either: only whole shards of this key are.
    first = (out / "all-00000.safetensors").read_bytes()
    net.images = 0
    resumed = extract_features(net, folder, out, **args)
    assert net.images == 27 - 8 - 1  # only shards 1..3: the broken file is in shard 0
    _same_cache(resumed, whole)
    assert (out / "all-00000.safetensors").read_bytes() == first

    (out / "manifest.json").unlink()
    (out / "all-00002.safetensors").write_bytes(first[:-4])
    net.images = 0
    again = extract_features(net, folder, out, **args)
    assert net.images == 8  # the truncated shard only
    _same_cache(again, whole)
