"""Transfer learning: cached backbone features, linear probes, fine-tuning.

- :func:`extract_features` / :class:`FeatureCache`: a frozen backbone's pooled features of an
  image folder or data module, cached and verified on disk (``moderncnn features``).
- :func:`train_probe`: a linear (or small MLP) head on those features (``moderncnn probe``).
- :class:`FreezeBackbone`: fine-tuning callback: head first, then the backbone at a lower rate.

Homed elsewhere, and still importable from here for existing code (not in ``__all__``):
``predict`` (:mod:`moderncnn.inference`; ``moderncnn.predict``), ``load_probe``
(:mod:`moderncnn.inference.probe`),
``load_pretrained``, ``resolve_weights`` (:mod:`moderncnn.models.pretrained`; also
``create_model(..., weights="imagenet")``), ``read_state_dict``, ``CheckpointError``
(:mod:`moderncnn.io.checkpoint`).
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
    "load_probe": "moderncnn.inference.probe",
    "FreezeBackbone": "moderncnn.transfer.finetune",
    "predict": "moderncnn.inference.prediction",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moderncnn.transfer' has no attribute {name!r}")


# Names whose public home is another module (see the docstring): one public path each.
_ELSEWHERE = {"load_pretrained", "resolve_weights", "read_state_dict", "CheckpointError"}
_ELSEWHERE |= {"load_probe", "predict"}
__all__ = [name for name in _LAZY if name not in _ELSEWHERE]
