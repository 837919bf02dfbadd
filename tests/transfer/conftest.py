"""Fixtures of the transfer-learning tests: an image folder and a private torch cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def cifar_folder(tmp_path: Path, cifar_samples_dir: Path) -> Path:
    """The 20 real CIFAR-10 test images in one sub-folder per class (ImageFolder layout)."""
    root = tmp_path / "images"
    for image in sorted(cifar_samples_dir.glob("cifar10_*_*.png")):
        label = image.stem.rsplit("_", 1)[1]
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / f"class{label}" / image.name)
    return root


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME, so weights are looked up in (and downloaded to) tmp_path."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home
