"""The optimizer's parameter groups: weights with weight decay, and the parameters that take none.

Goyal et al. 2017 ("Accurate, Large Minibatch SGD"): no weight decay on the biases and the
BatchNorm scales and shifts, the 1-D parameters. Training from scratch (``ImageClassifier``)
and unfreezing a backbone mid-run (``FreezeBackbone``) split their parameters the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["weight_decay_groups"]


def weight_decay_groups(
    params: Iterable[nn.Parameter], weight_decay: float, no_decay_bn_bias: bool
) -> list[dict[str, Any]]:
    """``[{"params": weights, "weight_decay": weight_decay}]``, followed, when
    ``no_decay_bn_bias`` puts any 1-D parameter aside, by ``{"params": those, "weight_decay":
    0.0}``. The first group is there even when empty."""
    decay, no_decay = [], []
    for param in params:
        (no_decay if no_decay_bn_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
