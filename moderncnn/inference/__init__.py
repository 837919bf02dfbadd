"""Running trained models: batch-norm folding, loading any artifact we write
(:func:`load_model`), predicting image files, and export to ONNX, TorchScript and safetensors."""

from __future__ import annotations

from .loading import LoadedModel, Prediction, load_model, save_model
from .optimize import conv_bn_pairs, optimize_for_inference
from .prediction import predict
from .publish import push_to_hub

__all__ = [
    "LoadedModel",
    "Prediction",
    "conv_bn_pairs",
    "load_model",
    "optimize_for_inference",
    "predict",
    "push_to_hub",
    "save_model",
]
