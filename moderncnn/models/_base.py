"""The interface every moderncnn model shares (the same one timm users know).

``forward_features`` -> last feature map, ``forward_head`` -> pooled features or logits,
``reset_classifier``, ``num_features``, ``feature_info`` (channels and stride of each
stage) and ``forward_intermediates`` (the stage feature maps, for detection or probing).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError


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
    Auxiliary heads (attributes named in ``aux_head_names``, None when not built) name their
    own last layer with a ``classifier_name`` and have a ``reset_classifier``.
    """

    classifier_name: str = "fc"
    aux_head_names: tuple[str, ...] = ()
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

    def aux_modules(self) -> list[str]:
        """Names of the auxiliary heads the model was built with (``[]`` without them)."""
        return [n for n in self.aux_head_names if isinstance(getattr(self, n, None), nn.Module)]

    def head_modules(self) -> list[str]:
        """Dotted names of the layers that depend on the class count: the final classifier,
        then each auxiliary head's last layer (``["fc", "aux1.fc2", "aux2.fc2"]``).

        Pretrained weights of another class count load everything but these.
        """
        aux = [f"{n}.{getattr(self, n).classifier_name}" for n in self.aux_modules()]
        return [self.classifier_name, *aux]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier and the aux heads' with fresh ones for ``num_classes``
        (0 removes them)."""
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        setattr(self, self.classifier_name, head)
        for name in self.aux_modules():
            getattr(self, name).reset_classifier(num_classes)

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
