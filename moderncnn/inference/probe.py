"""The probe: its head, the classifier it makes with its backbone, and its folder.

:class:`ProbeHead` standardises pooled features with the training split's statistics, then
applies a linear layer (or a small MLP). :class:`ProbeClassifier` puts it on the frozen
backbone the features came from: images in, the probe's logits out, as one ``nn.Module`` that
predicts, exports and explains like any classifier.

A probe folder (``moderncnn probe --out DIR``) holds ``probe.json`` (its card, the training
config and the metrics) and ``probe_head.safetensors``; :func:`save_probe` writes it and
:func:`load_probe` reads it. :mod:`moderncnn.transfer.probe` trains the head;
:func:`~moderncnn.inference.load_model` loads a probe folder with its backbone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moderncnn.io.atomic import atomic_write, atomic_write_text
from moderncnn.io.card import ModelCard, read_card_json
from moderncnn.io.checkpoint import read_state_dict
from moderncnn.io.errors import ConfigError, DataError, MissingFileError
from moderncnn.models.factory import check_parameter_count

from .backbone import pooled_features

__all__ = [
    "MAX_PROBE_CHAIN",
    "PROBE_HEAD",
    "PROBE_INFO",
    "ProbeClassifier",
    "ProbeHead",
    "load_probe",
    "probe_head",
    "read_probe_card",
    "save_probe",
]

PROBE_INFO, PROBE_HEAD = "probe.json", "probe_head.safetensors"
# A probe's backbone may be another probe folder; a chain longer than this is a crafted one.
MAX_PROBE_CHAIN = 8


class ProbeHead(nn.Module):
    """Standardise features with fixed statistics, then a linear layer or a small MLP."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden: int | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features) if mean is None else mean.clone())
        self.register_buffer("std", torch.ones(num_features) if std is None else std.clone())
        if hidden:
            self.net = nn.Sequential(
                nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )
        else:
            self.net = nn.Sequential(nn.Linear(num_features, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.net((features - self.mean) / self.std)


class ProbeClassifier(nn.Module):
    """A frozen backbone's pooled features (pre-logits, or one stage's map) into a probe head.

    Args:
        backbone: the headless network the probe's features came from.
        head: the trained :class:`ProbeHead`.
        stage: pool this entry of the backbone's ``feature_info`` instead of its last map.
    """

    def __init__(self, backbone: nn.Module, head: ProbeHead, stage: int | None = None) -> None:
        super().__init__()
        stages = len(getattr(backbone, "feature_info", None) or [])
        if stage is not None and (
            isinstance(stage, bool) or not isinstance(stage, int) or not -stages <= stage < stages
        ):  # a probe.json edited by hand: an IndexError at the first image otherwise
            raise ConfigError(
                f"probe stage {stage!r} is not a stage of {type(backbone).__name__}, which has "
                f"{stages} (0 to {stages - 1})"
            )
        self.backbone, self.head, self.stage = backbone, head, stage
        self.num_classes = head.net[-1].out_features
        self.input_size = getattr(backbone, "input_size", None)

    def features(self, x: Tensor) -> Tensor:
        """N x D pooled features, as the feature cache holds them."""
        return pooled_features(self.backbone, x, self.stage)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def probe_head(card: ModelCard) -> ProbeHead:
    """An untrained head of the sizes a probe card records."""
    return ProbeHead(int(card.head["num_features"]), card.num_classes, card.head.get("hidden"))


def save_probe(out: Path, head: ProbeHead, card: ModelCard, **info: Any) -> Path:
    """Write a probe folder: the head's weights, then ``probe.json`` (the card and ``info``)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    atomic_write(out / PROBE_HEAD, lambda tmp: save_file(state, str(tmp)))
    content = {"card": card.to_dict(), **info}
    atomic_write_text(out / PROBE_INFO, json.dumps(content, indent=1) + "\n")
    return out


def load_probe(folder: str | Path) -> tuple[ProbeHead, ModelCard]:
    """The head saved by ``moderncnn probe`` and its card."""
    folder = Path(folder)
    if not (folder / PROBE_INFO).is_file() or not (folder / PROBE_HEAD).is_file():
        raise MissingFileError(
            f"{folder} is not a probe folder (needs {PROBE_INFO} and {PROBE_HEAD}); make one with "
            "`moderncnn probe CACHE --out DIR`"
        )
    card = read_probe_card(folder)
    _check_backbone_chain(folder, card)
    features, hidden = card.head["num_features"], card.head.get("hidden")
    weights = (
        features * hidden + hidden * card.num_classes if hidden else features * card.num_classes
    )
    check_parameter_count(weights, f"{folder / PROBE_INFO}'s head")
    head = probe_head(card)
    state = read_state_dict(folder / PROBE_HEAD)  # CheckpointError for crafted bytes
    try:
        head.load_state_dict(state)
    except (RuntimeError, OSError) as err:  # torch's message spans lines: one line here
        why = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise DataError(f"{folder / PROBE_HEAD} does not fit {PROBE_INFO}: {why}") from err
    return head.eval(), card


def read_probe_card(folder: Path) -> ModelCard:
    """The card in ``folder/probe.json``, checked to be a probe's."""
    info = read_card_json(folder / PROBE_INFO)
    card = ModelCard.from_dict(info.get("card"), str(folder / PROBE_INFO))
    if card.kind != "probe" or card.parent is None:
        raise DataError(f"{folder / PROBE_INFO}: its card is not a probe's (kind {card.kind!r})")
    return card


def _check_backbone_chain(folder: Path, card: ModelCard) -> None:
    """Refuses a probe whose backbone is, through other probe folders, the probe itself (its
    loading would recurse until Python stops it)."""
    seen = [folder.resolve()]
    while True:
        weights = card.parent.source.get("weights") if card.parent is not None else None
        if not isinstance(weights, str) or not (Path(weights) / PROBE_INFO).is_file():
            return
        parent = Path(weights).resolve()
        if parent in seen or len(seen) >= MAX_PROBE_CHAIN:
            chain = " -> ".join(str(path) for path in [*seen, parent])
            raise DataError(
                f"{folder / PROBE_INFO}: its backbone leads back to a probe already in the chain "
                f"or goes on too long ({chain}); point source.weights at the backbone's checkpoint"
            )
        seen.append(parent)
        card = read_probe_card(parent)
