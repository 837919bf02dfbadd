"""Running trained models: batch-norm folding, export to ONNX/TorchScript/safetensors, loading
any artifact we write (:func:`load_model`) and predicting image files."""

from __future__ import annotations

from .optimize import conv_bn_pairs, optimize_for_inference

__all__ = ["conv_bn_pairs", "optimize_for_inference"]
