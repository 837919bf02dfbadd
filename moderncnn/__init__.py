"""moderncnn: readable, torchvision-exact modern CNNs, and the everyday work done with them."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .models import create_model, list_models

__version__ = "0.1.0"

# Heavy imports (Lightning, matplotlib) load on first use, so `import moderncnn` stays quick.
_LAZY = {
    "summary": "moderncnn.models.layer_table",
    "optimize_for_inference": "moderncnn.inference",
    "ImageClassifier": "moderncnn.training.module",
    "FashionMNISTDataModule": "moderncnn.data",
    "CIFAR10DataModule": "moderncnn.data",
    "ImageFolderDataModule": "moderncnn.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moderncnn' has no attribute {name!r}")


__all__ = ["create_model", "list_models", *_LAZY]
