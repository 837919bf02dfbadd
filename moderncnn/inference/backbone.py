"""A frozen backbone as a feature extractor: pooled features, computed fast, and its identity.

:func:`feature_fn` turns any network into images -> N x D features: a moderncnn model's pooled
pre-logits (``forward_head(..., pre_logits=True)``), a pooled stage map, or any module's 4-D
or 2-D output. It runs a batch-norm-folded, channels-last copy of the network
(:func:`~moderncnn.inference.optimize_for_inference`): the same features, faster.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError, DataError

from .optimize import BATCH_NORMS, optimize_for_inference

__all__ = [
    "fast_inference_copy",
    "feature_fn",
    "headless",
    "pool_features",
    "pooled_features",
    "under_bf16",
    "weights_sha256",
]


def headless(model: nn.Module) -> nn.Module:
    """``model`` without its classifier (``reset_classifier(0)``), in eval mode, in place.

    A backbone's identity (:func:`weights_sha256`) and features must not depend on a head
    that does not take part: a random 1000-way classifier would change the hash on every build.
    """
    reset = getattr(model, "reset_classifier", None)
    if callable(reset) and getattr(model, "num_classes", 0):
        reset(0)
    return model.eval()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fast_inference_copy(backbone: nn.Module) -> nn.Module | None:
    """A copy of ``backbone`` with batch norm folded into its convs, channels-last; or None.

    The same outputs, faster (:func:`moderncnn.inference.optimize_for_inference`). None when
    there is no batch norm to fold (the module then runs as it is, uncopied), and, with a
    warning, when a foreign module resists the copy (an attribute ``deepcopy`` cannot copy...).
    """
    if not any(isinstance(m, BATCH_NORMS) for m in backbone.modules()):
        return None
    try:
        return optimize_for_inference(backbone)
    except Exception as err:  # anything a foreign module raises while being copied or folded
        _warn_unoptimized(backbone, err)
        return None


def _warn_unoptimized(backbone: nn.Module, err: Exception) -> None:
    warnings.warn(
        f"optimize_for_inference does not suit {type(backbone).__name__} "
        f"({type(err).__name__}: {err}); it runs unchanged, in eval mode",
        stacklevel=3,
    )


def feature_fn(
    backbone: nn.Module, stage: int | None = None, optimize: bool = True
) -> Callable[[Tensor], Tensor]:
    """Images -> N x D features: pooled pre-logits, a pooled stage map, or any 4-D/2-D output.

    ``optimize``: compute them with :func:`fast_inference_copy` (the same features, faster).
    Should the copy fail on the first batch (a foreign ``forward`` that calls ``view`` on a
    channels-last map, say), the backbone itself takes over, with a warning.
    """
    if stage is not None:
        info = getattr(backbone, "feature_info", None)
        if info is None or not hasattr(backbone, "forward_intermediates"):
            raise ConfigError(
                f"stage={stage} needs a moderncnn model (feature_info, forward_intermediates), "
                f"got {type(backbone).__name__}"
            )
        if not -len(info) <= stage < len(info):
            raise ConfigError(f"stage must be in 0..{len(info) - 1}, got {stage}")

    def run(net: nn.Module, x: Tensor) -> Tensor:
        return pooled_features(net, x, stage)

    fast = fast_inference_copy(backbone) if optimize else None
    checked = False

    def features(x: Tensor) -> Tensor:
        nonlocal fast, checked
        if fast is None:
            return run(backbone, x)
        try:  # channels-last images for the channels-last weights
            out = run(fast, x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x)
        except Exception as err:
            if checked:  # it worked before: a real error of this batch
                raise
            _warn_unoptimized(backbone, err)
            fast = None
            return run(backbone.eval(), x)
        checked = True
        return out

    return features


def under_bf16(fn: Callable[[Tensor], Tensor], device_type: str) -> Callable[[Tensor], Tensor]:
    """``fn`` computed under bfloat16 autocast, its features returned as float32."""

    def run(x: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return fn(x).float()

    return run


def pooled_features(net: nn.Module, x: Tensor, stage: int | None = None) -> Tensor:
    """N x D features of images ``x``, as the feature cache holds them: stage ``stage``'s map
    average-pooled, else the pooled pre-logits (``forward_head(..., pre_logits=True)``) of a
    model that has them, else ``net(x)`` (average-pooled when it is a 4-D map)."""
    if stage is not None:
        return pool_features(net.forward_intermediates(x, indices=[stage])[0])
    if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
        return net.forward_head(net.forward_features(x), pre_logits=True)
    return pool_features(net(x))


def pool_features(out: Tensor) -> Tensor:
    """A 4-D map average-pooled to N x C; N x D features as they are."""
    if out.ndim == 4:  # N x C x H x W -> N x C
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
    if out.ndim == 2:
        return out
    raise DataError(
        f"the backbone returned a {out.ndim}-D {tuple(out.shape)} tensor; expected N x C x H x W "
        "(pooled here) or N x D features"
    )
