"""The interface every moderncnn model shares (the same one timm users know).

``forward_features`` -> last feature map, ``forward_head`` -> pooled features or logits,
``reset_classifier``, ``num_features``, ``feature_info`` (channels and stride of each
stage) and ``forward_intermediates`` (the stage feature maps, for detection or probing).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class FeatureInfo(NamedTuple):
    """One stage's output: the module that produces it, its channels and its stride."""

    module: str
    num_chs: int
    reduction: int


class ClassifierModel(nn.Module):
    """Base class for the image classifiers in :mod:`moderncnn.models`.

    Subclasses set ``num_classes``, ``num_features``, ``feature_info``, ``input_size``
    (the size the recipe is trained at) and ``min_input_size``, build their classifier
    under the attribute named by ``classifier_name`` and implement ``forward_features``.
    """

    classifier_name: str = "fc"
    num_classes: int
    num_features: int
    feature_info: list[FeatureInfo]
    input_size: tuple[int, int, int]
    min_input_size: tuple[int, int, int]

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout and classifier; ``pre_logits`` stops before it."""
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        if pre_logits:
            return x
        dropout = getattr(self, "dropout", None)
        if dropout is not None:
            x = dropout(x)
        return self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        setattr(self, self.classifier_name, head)

    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> list[Tensor]:
        """Feature maps of the stages in ``feature_info`` (all of them by default)."""
        wanted = range(len(self.feature_info)) if indices is None else indices
        names = {self.feature_info[i].module: i for i in wanted}
        outputs: dict[int, Tensor] = {}
        modules = dict(self.named_modules())
        handles = [
            modules[name].register_forward_hook(
                lambda _m, _inp, out, i=i: outputs.__setitem__(i, out)
            )
            for name, i in names.items()
        ]
        try:
            self.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        return [outputs[i] for i in wanted]
