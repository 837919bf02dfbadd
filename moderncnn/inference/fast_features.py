"""A backbone's pooled features on the chosen runtime: torch, ONNX Runtime or OpenVINO.

ONNX Runtime and OpenVINO run a verified, headless ONNX export of the backbone whose output is
``forward_head(..., pre_logits=True)``: the same features as :func:`feature_fn` within fp32
round-off. It is made on the first batch (when the image size is known) and kept in ``folder``
(the feature cache), named by the hash of the backbone's weights, card and input size.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from moderncnn.io.card import ModelCard
from moderncnn.io.download import cache_dir
from moderncnn.io.errors import ConfigError, ModernCNNError

from .backbone import feature_fn, under_bf16, weights_sha256
from .onnx_cache import cached_export
from .runtimes import choose_runtime, resolve_threads, run_exported

__all__ = ["backbone_features"]


def _exportable(backbone: nn.Module, stage: int | None) -> bool:
    """Whether the whole backbone's output is its pooled pre-logits (a headless moderncnn model)."""
    return (
        stage is None
        and hasattr(backbone, "forward_head")
        and not getattr(backbone, "num_classes", 0)
    )


def backbone_features(
    backbone: nn.Module,
    card: ModelCard,
    folder: str | Path,
    stage: int | None = None,
    *,
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Callable[[Tensor], Tensor], str]:
    """Images -> N x D pooled features on ``runtime``, and the runtime chosen.

    ``auto`` runs the ONNX export only where it applies (a headless moderncnn model, no
    ``stage``); torch otherwise. An explicit ``onnxruntime``/``openvino`` where it does not
    apply is an error.
    """
    device = torch.device(device)
    engine = choose_runtime(runtime, precision, device)
    if engine != "torch" and not _exportable(backbone, stage):
        if runtime != "auto":
            raise ConfigError(
                f"runtime {runtime!r} runs a headless moderncnn backbone's pooled features; "
                f"{type(backbone).__name__} with stage={stage} runs on runtime 'torch'"
            )
        engine = choose_runtime("torch", precision, device)
    if engine == "torch":
        if threads is not None:
            torch.set_num_threads(resolve_threads(threads))
        fn = feature_fn(backbone, stage)
        return (under_bf16(fn, device.type) if precision == "bf16" else fn), engine
    fn = _onnx_features(backbone, card, Path(folder), engine, precision, threads, runtime == "auto")
    return fn, engine


def _onnx_features(backbone, card, folder, engine, precision, threads, may_fall_back):
    run: Callable[[Tensor], Tensor] | None = None

    def features(x: Tensor) -> Tensor:
        nonlocal run
        if run is None:
            try:
                path = _cached_backbone_export(backbone, card, folder, tuple(x.shape[1:]))
                run = run_exported(path, "onnx", engine, precision, threads)
            except ModernCNNError as err:
                if not may_fall_back:
                    raise
                warnings.warn(
                    f"the ONNX export of {card.architecture} failed ({err}); its features are "
                    "computed in torch",
                    stacklevel=2,
                )
                fn = feature_fn(backbone)
                run = under_bf16(fn, "cpu") if precision == "bf16" else fn
        return run(x)

    return features


def _cached_backbone_export(backbone: nn.Module, card: ModelCard, folder: Path, size: tuple):
    """The backbone's verified ONNX export, kept in the user cache (beside torchvision's
    weights, ``$TORCH_HOME/hub/checkpoints/onnx``) by the hash of its weights, card and input
    size: feature caches stay features only, and every folder a backbone reads shares one
    export, used again only while its sidecar's key and hash match it (:mod:`.onnx_cache`).
    Where that cache cannot be written, the export goes beside the features."""
    digest = hashlib.sha256(weights_sha256(backbone).encode())
    digest.update(json.dumps([card.replace(metrics={}).to_dict(), list(size)]).encode())
    name = f"backbone-{card.architecture}.{digest.hexdigest()[:16]}.onnx"
    shared, local = cache_dir() / "onnx" / name, folder / name
    card = card.replace(class_names=None, num_classes=0, kind="backbone")
    return cached_export(backbone, card, (shared, local), digest.hexdigest()[:16], size)
