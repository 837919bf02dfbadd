"""Shared fixtures: tiny real inputs, seeded, and the paths of the offline data."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(autouse=True, scope="session")
def _own_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user cache ($TORCH_HOME: weights, ONNX exports) in a temporary folder: the tests
    write nothing into the user's home and find nothing an earlier session left there."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    yield
    mp.undo()


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
