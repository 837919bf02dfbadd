"""moderncnn: readable, torchvision-exact modern CNNs, and the everyday work done with them."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .io.noise import silence_known_noise

silence_known_noise()  # what other libraries print that a user cannot act on (io/noise.py)

__version__ = "0.1.0"

# Everything loads on first use (torch, Lightning, matplotlib), so `import moderncnn` and
# `moderncnn --help` stay quick.
_LAZY = {
    "create_model": "moderncnn.models",
    "list_models": "moderncnn.models",
    "summary": "moderncnn.viz.diagram",
    "optimize_for_inference": "moderncnn.inference",
    "load_model": "moderncnn.inference",
    "save_model": "moderncnn.inference",
    "predict": "moderncnn.inference",
    "push_to_hub": "moderncnn.inference",
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
    "features": "moderncnn.transfer.features",
    "probe": "moderncnn.transfer.probe",
    "export": "moderncnn.training.export_command",
    "preview": "moderncnn.training.config",
    "pack_image_folder": "moderncnn.data.packed",
    "list_configs": "moderncnn.io.configs",
}


if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_public_surface.py keeps it whole
    from moderncnn.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule
    from moderncnn.data.packed import pack_image_folder
    from moderncnn.inference import (
        load_model,
        optimize_for_inference,
        predict,
        push_to_hub,
        save_model,
    )
    from moderncnn.io.card import ModelCard, Preprocess
    from moderncnn.io.configs import list_configs
    from moderncnn.io.errors import ModernCNNError
    from moderncnn.models import create_model, list_models
    from moderncnn.training.compare import compare
    from moderncnn.training.config import from_config, preview
    from moderncnn.training.export_command import export
    from moderncnn.training.lr_find import lr_find
    from moderncnn.training.module import ImageClassifier
    from moderncnn.training.run_report import write_report
    from moderncnn.training.trainer import Trainer
    from moderncnn.training.tune import tune
    from moderncnn.transfer.features import features
    from moderncnn.transfer.probe import probe
    from moderncnn.viz import (
        explain,
        plot_architecture,
        plot_confusion_matrix,
        plot_curves,
        plot_degradation,
        plot_top_losses,
        show_batch,
        show_results,
    )
    from moderncnn.viz.diagram import summary


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moderncnn' has no attribute {name!r}")


# Written out (not built from _LAZY) so that type checkers read it.
__all__ = [
    "create_model",
    "list_models",
    "summary",
    "optimize_for_inference",
    "load_model",
    "save_model",
    "predict",
    "push_to_hub",
    "ModelCard",
    "Preprocess",
    "ModernCNNError",
    "ImageClassifier",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "ImageFolderDataModule",
    "Trainer",
    "from_config",
    "compare",
    "tune",
    "lr_find",
    "plot_curves",
    "plot_confusion_matrix",
    "show_batch",
    "show_results",
    "plot_top_losses",
    "explain",
    "plot_architecture",
    "plot_degradation",
    "write_report",
    "features",
    "probe",
    "export",
    "preview",
    "pack_image_folder",
    "list_configs",
]
