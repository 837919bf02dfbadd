"""moderncnn: readable, torchvision-exact modern CNNs, and the everyday work done with them."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .io.noise import silence_known_noise
from .models import create_model, list_models

silence_known_noise()  # what other libraries print that a user cannot act on (io/noise.py)

__version__ = "0.1.0"

# Heavy imports (Lightning, matplotlib) load on first use, so `import moderncnn` stays quick.
_LAZY = {
    "summary": "moderncnn.models.layer_table",
    "optimize_for_inference": "moderncnn.inference",
    "load_model": "moderncnn.inference",
    "save_model": "moderncnn.inference",
    "predict": "moderncnn.inference",
    "ModelCard": "moderncnn.io.card",
    "Preprocess": "moderncnn.io.card",
    "ModernCNNError": "moderncnn.io.errors",
    "ImageClassifier": "moderncnn.training.module",
    "FashionMNISTDataModule": "moderncnn.data",
    "CIFAR10DataModule": "moderncnn.data",
    "ImageFolderDataModule": "moderncnn.data",
    "Trainer": "moderncnn.training.trainer",
    "from_config": "moderncnn.training.config",
    "compare": "moderncnn.training.compare",
    "tune": "moderncnn.training.tune",
    "lr_find": "moderncnn.training.lr_find",
    "plot_curves": "moderncnn.viz",
    "plot_confusion_matrix": "moderncnn.viz",
    "show_batch": "moderncnn.viz",
    "show_results": "moderncnn.viz",
    "plot_top_losses": "moderncnn.viz",
    "explain": "moderncnn.viz",
    "plot_architecture": "moderncnn.viz",
    "plot_degradation": "moderncnn.viz",
    "write_report": "moderncnn.training.run_report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moderncnn' has no attribute {name!r}")


__all__ = ["create_model", "list_models", *_LAZY]
