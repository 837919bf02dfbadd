"""Which backbone features come from: its card, the identity of its weights, how to build it.

A backbone is named three ways, and each gives a :class:`~moderncnn.io.card.ModelCard` of kind
``"backbone"`` before anything is built, so a feature cache can be found by its key alone:

- a registered name with ``weights`` (``"imagenet"``, a URL, a ``.pth``/``.safetensors``
  state dict) and the entry point's ``model_kwargs`` (widths, depths, ...);
- ``weights`` that is one of our own artifacts (a ``.ckpt`` from ``moderncnn fit``, a saved
  model folder): its own card gives the architecture, its arguments and its normalisation;
- an ``nn.Module`` from Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moderncnn.data.stats import GREY_IMAGENET, IMAGENET
from moderncnn.inference import load_model
from moderncnn.inference.backbone import headless, weights_sha256
from moderncnn.inference.loading import build_network, read_card
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import ConfigError
from moderncnn.models import check_model_name, create_model
from moderncnn.models.pretrained import find_pretrained

__all__ = ["BackboneSource", "resolve_backbone"]


@dataclass
class BackboneSource:
    """A backbone's card, what identifies its weights (None: only a build tells), a builder."""

    card: ModelCard
    weights_id: str | None
    build: Callable[[], nn.Module]


def _is_artifact(weights: str | Path | None) -> bool:
    if weights is None:
        return False
    path = Path(weights).expanduser()
    return path.suffix == ".ckpt" and path.is_file() or (path / "config.json").is_file()


def _local_spec(weights: str | None) -> str | None:
    """``weights`` as a probe can find it again: local files as absolute paths."""
    if weights is None or "://" in weights or not Path(weights).expanduser().is_file():
        return weights
    return str(Path(weights).expanduser().resolve())


def _weights_id(weights: str, architecture: str) -> str:
    """What identifies ``weights`` without loading them: a file's SHA-256, a file name, a URL."""
    path = Path(weights).expanduser()
    if path.is_file():
        return "sha256:" + sha256_file(path)
    entry = None if "://" in weights else find_pretrained(architecture, weights)
    return entry.file_name if entry is not None else weights  # the name holds a hash prefix


def default_preprocess(card: ModelCard, weights: str | None) -> Preprocess:
    """The evaluation transform a backbone expects: its weights' recipe, else its input size."""
    mean, std = IMAGENET if card.in_chans == 3 else GREY_IMAGENET
    entry = find_pretrained(card.architecture, weights) if weights else None
    if entry is not None:
        return Preprocess(entry.crop_size, entry.resize_size, tuple(mean), tuple(std))
    with torch.device("meta"):  # the input size only: no memory, no initialisation
        side = build_network(card).input_size[-1]
    return Preprocess.for_size(side, mean, std)


def resolve_backbone(
    backbone: nn.Module | str | None,
    weights: str | Path | None,
    model_kwargs: Mapping[str, Any] | None,
    in_chans: int | None,
) -> BackboneSource:
    """The :class:`BackboneSource` of ``extract_features``' arguments (see the module docstring).

    ``in_chans`` is the data's channel count where the data says it (a data module), else None.
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(backbone, nn.Module):
        kind = f"{type(backbone).__module__}.{type(backbone).__qualname__}"
        chans, side = getattr(backbone, "input_size", (in_chans or 3, 224, 224))[:2]
        mean, std = IMAGENET if chans == 3 else GREY_IMAGENET
        card = ModelCard(
            kind, 0, chans, kind="backbone", preprocess=Preprocess.for_size(side, mean, std),
            source={"weights": None},
        )  # fmt: skip
        return BackboneSource(card, "sha256:" + weights_sha256(backbone), backbone.eval)
    weights = None if weights is None else str(weights)
    if _is_artifact(weights):
        if kwargs:
            raise ConfigError(f"{weights} carries its own model arguments; drop model_kwargs")
        own = read_card(weights)  # the network is built only if the cache is not valid
        if backbone is not None and backbone != own.architecture:
            raise ConfigError(
                f"{weights} is a {own.architecture}, not a {backbone}; drop --backbone, or give "
                "weights of that architecture"
            )
        card = own.replace(
            kind="backbone", num_classes=0, class_names=None, parent=None, head={}, metrics={},
            source={"weights": _local_spec(weights)},
        )  # fmt: skip
        return BackboneSource(
            card,
            _weights_id(weights, own.architecture),
            lambda: headless(load_model(weights).network),
        )
    if backbone is None:
        raise ConfigError("give a backbone name (--backbone), or --weights of a .ckpt of ours")
    check_model_name(backbone)
    chans = int(kwargs.pop("in_chans", in_chans or 3))
    card = ModelCard(
        backbone, 0, chans, kwargs, kind="backbone", source={"weights": _local_spec(weights)}
    )
    card = card.replace(preprocess=default_preprocess(card, weights))

    def build() -> nn.Module:
        model = create_model(backbone, num_classes=0, in_chans=chans, weights=weights, **kwargs)
        return model.eval()

    return BackboneSource(card, weights and _weights_id(weights, backbone), build)
