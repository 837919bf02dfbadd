"""``create_model``: a registered architecture by name, with pretrained weights if asked; and
``check_model_kwargs``, the size bounds that every door building a model from a config or a file
(training, ``load_model``, ``predict``, ``export``) checks first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from moderncnn.io.errors import ConfigError

from ._registry import model_entrypoint
from .pretrained import load_pretrained

__all__ = ["MAX_PARAMETERS", "check_model_kwargs", "check_parameter_count", "create_model"]


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
        weights: pretrained weights to load: ``"imagenet"`` (the variant's default weights,
            see :func:`get_variant_config`), an ``https://`` URL or a ``.pth``/``.safetensors``
            file; see :mod:`moderncnn.models.pretrained`.
        **kwargs: passed to the model's constructor (widths, depths, growth rate, ...).

    Raises:
        ConfigError: the network would have more than :data:`MAX_PARAMETERS` weights (counted
            on the meta device, before any memory is allocated).
    """
    entrypoint = model_entrypoint(name)
    if torch.get_default_device().type != "meta":
        # Sizes multiply (4 widths of 20000: 59 billion weights): count them before allocating.
        with torch.device("meta"):
            network = entrypoint(num_classes=num_classes, in_chans=in_chans, **kwargs)
        settings = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        what = f"{name}(num_classes={num_classes}, in_chans={in_chans}, {settings[:200]})"
        check_parameter_count(network, what)
    model = entrypoint(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        load_pretrained(
            model, weights, model_name=name, transform_input=kwargs.get("transform_input")
        )
    return model


# A billion weights, 4 GiB in float32: the largest CNNs published (BiT-L's ResNet-152x4, 0.9 B)
# fit; a crafted config or card asking for more is refused before any memory is allocated.
MAX_PARAMETERS = 10**9


def check_parameter_count(network: nn.Module | int, what: str) -> None:
    """Refuses a network (or a count) of more than :data:`MAX_PARAMETERS` weights, naming it."""
    if isinstance(network, int):
        count = network
    else:
        count = sum(t.numel() for t in (*network.parameters(), *network.buffers()))
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"{what} would have {count / 1e9:,.1f} billion weights ({count * 4 / 2**30:,.0f} GiB "
            f"in float32), above the {MAX_PARAMETERS / 1e9:g} billion this library builds; "
            "use smaller widths, width_multiplier, num_classes or in_chans"
        )


# Bounds on model_kwargs: the deepest published ResNet (ResNet-1202) has 600 residual units.
MAX_MODEL_UNITS = 1000
MAX_MODEL_INT = 65536  # widths, growth rates, ...: torchvision's widest layer has 2048 channels
_UNIT_KEYS = ("layers", "block_config")


def _ints(value: Any, where: str) -> list[tuple[str, int]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [(where, value)]
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in _ints(v, f"{where}.{k}")]
    if isinstance(value, list | tuple):
        return [pair for i, v in enumerate(value) for pair in _ints(v, f"{where}[{i}]")]
    return []


def check_model_kwargs(model_kwargs: Any) -> None:
    """Refuses ``model_kwargs`` sizes that would take hours to build or all the memory:
    more than :data:`MAX_MODEL_UNITS` units (``layers: [1000000]``), or any number above
    :data:`MAX_MODEL_INT`."""
    if not isinstance(model_kwargs, Mapping):
        raise ConfigError(
            f"model.model_kwargs must be a mapping of keyword arguments, got {model_kwargs!r}"
        )
    for key in _UNIT_KEYS:
        value = model_kwargs.get(key)
        units = _ints(value, key) if isinstance(value, list | tuple) else []
        total = sum(n for _, n in units)
        if total > MAX_MODEL_UNITS:
            raise ConfigError(
                f"model.model_kwargs.{key} asks for {total} units in all, more than the "
                f"{MAX_MODEL_UNITS} this library builds (ResNet-1202 has 600); use fewer"
            )
    for where, value in _ints(dict(model_kwargs), "model.model_kwargs"):
        if abs(value) > MAX_MODEL_INT:
            raise ConfigError(
                f"{where} is {value}, above {MAX_MODEL_INT}: a network that size would not fit "
                "in memory; use a smaller value"
            )
