"""Model registry: every architecture is a named entry point that builds it.

Entry points only fix depth and width and pass ``**kwargs`` through, so a variant is
data, not code. Registering a name twice raises instead of silently replacing the first.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

ModelFn = Callable[..., nn.Module]

_MODEL_ENTRYPOINTS: dict[str, ModelFn] = {}


class UnknownModelError(ValueError):
    """Raised by :func:`create_model` for a name that is not registered."""


def register_model(fn: ModelFn) -> ModelFn:
    """Register ``fn`` under its ``__name__``; a duplicate name raises ``ValueError``."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(
            f"model name {name!r} is already registered by "
            f"{_MODEL_ENTRYPOINTS[name].__module__}; pick another name"
        )
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``), sorted."""
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` naming the closest registered names."""
    if name in _MODEL_ENTRYPOINTS:
        return
    close = difflib.get_close_matches(name, list(_MODEL_ENTRYPOINTS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model name {name!r}.{hint} "
        f"See moderncnn.list_models() or `moderncnn models` for the {len(_MODEL_ENTRYPOINTS)} "
        "registered names."
    )


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: width of the classifier; 0 builds the model without one
            (``forward`` then returns the pooled features).
        in_chans: channels of the input images (1 for Fashion-MNIST).
        weights: pretrained weights to load: ``"imagenet"`` (torchvision's), an ``https://``
            URL or a ``.pth``/``.safetensors`` file; see :mod:`moderncnn.models.pretrained`.
        **kwargs: passed to the model's constructor (widths, depths, growth rate, ...).
    """
    check_model_name(name)
    model = _MODEL_ENTRYPOINTS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        # Imported on use: file formats and downloads are not needed to build a model.
        from moderncnn.models.pretrained import load_pretrained

        load_pretrained(
            model, weights, model_name=name, transform_input=kwargs.get("transform_input")
        )
    return model
