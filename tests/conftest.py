"""Shared fixtures: tiny real inputs, seeded, and the paths of the offline data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_SAMPLES = SHARED / "data" / "cifar10-test-samples"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def cifar_samples_dir() -> Path:
    if not CIFAR_SAMPLES.is_dir():
        pytest.skip(f"{CIFAR_SAMPLES} not found (CI puts ../shared beside the checkout)")
    return CIFAR_SAMPLES


@pytest.fixture
def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (scripts/setup.sh)")
    return FASHION_MNIST_DIR
