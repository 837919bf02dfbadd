"""A probe's head and the classifier it makes with its backbone.

:class:`ProbeHead` standardises pooled features with the training split's statistics, then
applies a linear layer (or a small MLP). :class:`ProbeClassifier` puts it on the frozen
backbone the features came from: images in, the probe's logits out, as one ``nn.Module`` that
predicts, exports and explains like any classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError

from .backbone import pooled_features

__all__ = ["ProbeClassifier", "ProbeHead"]


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
