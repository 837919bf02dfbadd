"""DenseNet (Huang et al., "Densely Connected Convolutional Networks", 2017).

Each layer sees the concatenation of every earlier feature map in its block and adds
``growth_rate`` new channels; transitions between blocks compress and halve the map.
Attribute names follow torchvision (``features.denseblock1.denselayer1.norm1``, ...,
``classifier``) so its checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from ._base import ClassifierModel, FeatureInfo
from ._registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (to ``bn_size * growth_rate``) then BN-ReLU-3x3 (to ``growth_rate``).

    The 1x1 "bottleneck" (DenseNet-B) keeps the 3x3 cheap however wide the input grows.
    ``memory_efficient`` recomputes the concatenation and bottleneck in the backward pass
    instead of storing them (Pleiss et al. 2017): quadratic memory becomes linear.
    """

    def __init__(
        self,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, inputs: list[Tensor]) -> Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            out = cp.checkpoint(lambda *xs: self.bottleneck(list(xs)), *inputs, use_reentrant=False)
        else:
            out = self.bottleneck(inputs)
        out = self.conv2(self.relu2(self.norm2(out)))
        return nn.functional.dropout(out, self.drop_rate, self.training) if self.drop_rate else out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the output concatenates the input and every new map."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, **layer_kwargs) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_chs + i * growth_rate, growth_rate, **layer_kwargs)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # N x (C_in + num_layers * growth_rate) x H x W


class Transition(nn.Sequential):
    """BN-ReLU-1x1 compression (DenseNet-C, halving the channels) and a 2x2 average pool."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


class DenseNet(ClassifierModel):
    """A stem, dense blocks separated by transitions, a final BN-ReLU, the classifier.

    Args:
        growth_rate: channels each layer adds (k in the paper).
        block_config: layers per dense block (its length is the number of blocks).
        num_init_features: channels of the stem convolution.
        bn_size: bottleneck width as a multiple of ``growth_rate``.
        compression: fraction of channels a transition keeps (0.5 in DenseNet-BC).
        memory_efficient: checkpoint each layer's bottleneck (slower, far less memory).
        stem: ``"imagenet"``: 7x7/2 conv + 3x3/2 max-pool; ``"cifar"``: one 3x3/1 conv,
            no pooling, as the paper's CIFAR DenseNets.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        memory_efficient: bool = False,
        stem: Literal["imagenet", "cifar"] = "imagenet",
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        self.num_classes = num_classes
        self.features = nn.Sequential()
        if stem == "imagenet":
            self.features.add_module(
                "conv0", nn.Conv2d(in_chans, num_init_features, 7, 2, padding=3, bias=False)
            )
            reduction, self.input_size, self.min_input_size = 4, (3, 224, 224), (3, 32, 32)
        elif stem == "cifar":
            # Huang et al. 2017, section 3: a 32x32 image gets a single 3x3 conv, no pooling.
            self.features.add_module(
                "conv0", nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False)
            )
            reduction, self.input_size, self.min_input_size = 1, (3, 32, 32), (3, 8, 8)
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        if stem == "imagenet":
            self.features.add_module("pool0", nn.MaxPool2d(3, stride=2, padding=1))

        self.feature_info = []
        chs = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(
                num_layers, chs, growth_rate, bn_size=bn_size, drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )  # fmt: skip
            self.features.add_module(f"denseblock{i + 1}", block)
            chs += num_layers * growth_rate
            if i == len(block_config) - 1:
                break
            self.feature_info.append(FeatureInfo(f"features.denseblock{i + 1}", chs, reduction))
            out_chs = int(chs * compression)
            self.features.add_module(f"transition{i + 1}", Transition(chs, out_chs))
            chs, reduction = out_chs, reduction * 2
        self.features.add_module("norm5", nn.BatchNorm2d(chs))
        # torchvision applies this ReLU functionally; as a module (no parameters, so the keys
        # are unchanged) it makes the last stage's map exactly what forward_features returns.
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.feature_info.append(FeatureInfo("features.relu5", chs, reduction))
        self.num_features = chs

        self.dropout = None
        self.classifier = nn.Linear(chs, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x num_features x H/32 x W/32 (imagenet stem)


def _densenet(growth: int, blocks: Sequence[int], init_features: int, **kwargs) -> DenseNet:
    """Entry points fix depth and width; any constructor argument can override them."""
    defaults = dict(growth_rate=growth, block_config=blocks, num_init_features=init_features)
    return DenseNet(**(defaults | kwargs))


@register_model
def densenet121(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, **kwargs)


@register_model
def densenet161(**kwargs) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, **kwargs)


@register_model
def densenet169(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, **kwargs)


@register_model
def densenet201(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, **kwargs)


# Small-image variants: the paper's CIFAR stem width is twice the growth rate.
@register_model
def densenet121_cifar(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, stem="cifar", **kwargs)


@register_model
def densenet161_cifar(**kwargs) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, stem="cifar", **kwargs)


@register_model
def densenet169_cifar(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, stem="cifar", **kwargs)


@register_model
def densenet201_cifar(**kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, stem="cifar", **kwargs)
