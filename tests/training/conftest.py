"""Helpers of the training tests: a tiny, real training config on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py


def write_tiny_config(path: Path, train_subset: int, **trainer: Any) -> Path:
    """A 5k-parameter ResNet on ``train_subset`` Fashion-MNIST images; ``trainer`` keys added."""
    config = {
        "seed_everything": 3,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16], "layers": [1, 1]},
            "lr": 0.1,
        },
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {
                "data_dir": str(FASHION_MNIST_DIR),
                "batch_size": 64,
                "train_subset": train_subset,
                "val_size": 64,
                "augmentations": [],
            },
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """``tmp_path/base.yaml``: :func:`write_tiny_config` with the test module's ``TINY_CONFIG``."""
    return write_tiny_config(tmp_path / "base.yaml", **request.module.TINY_CONFIG)


@pytest.fixture
def make_tiny_config() -> Any:
    """:func:`write_tiny_config` itself, for tests that write several tiny configs."""
    return write_tiny_config
