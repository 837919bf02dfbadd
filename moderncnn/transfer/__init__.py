"""Transfer learning: cached backbone features, linear probes, fine-tuning.

- :func:`extract_features` / :class:`FeatureCache`: a frozen backbone's pooled features of an
  image folder or data module, cached and verified on disk (``moderncnn features``).
- :func:`train_probe`: a linear (or small MLP) head on those features (``moderncnn probe``).
- :class:`FreezeBackbone`: fine-tuning callback: head first, then the backbone at a lower rate.
- :func:`predict` / :func:`load_probe`: a probe's predictions (from :mod:`moderncnn.inference`).
- :func:`load_pretrained` (also ``create_model(..., weights="imagenet")``): torchvision's
  ImageNet checkpoints, or any ``.pth``/``.safetensors`` file or ``https://`` URL.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Loaded on first use, so that importing a submodule does not import all of them.
_LAZY = {
    "load_pretrained": "moderncnn.models.pretrained",
    "resolve_weights": "moderncnn.models.pretrained",
    "read_state_dict": "moderncnn.io.checkpoint",
    "CheckpointError": "moderncnn.io.checkpoint",
    "extract_features": "moderncnn.transfer.features",
    "FeatureCache": "moderncnn.transfer.cache",
    "CacheInvalidError": "moderncnn.transfer.cache",
    "train_probe": "moderncnn.transfer.probe",
    "load_probe": "moderncnn.inference.loading",
    "FreezeBackbone": "moderncnn.transfer.finetune",
    "predict": "moderncnn.inference.prediction",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moderncnn.transfer' has no attribute {name!r}")


__all__ = list(_LAZY)
