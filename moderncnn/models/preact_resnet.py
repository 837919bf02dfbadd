"""Pre-activation ResNet (He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual
Networks", ECCV 2016).

The original ResNet unit is ``relu(x + BN(conv(...)))``: the ReLU after the addition sits on
the shortcut path, so a unit's output is not its input plus a residual. Moving BN and ReLU in
front of each convolution ("pre-activation", paper Fig. 1b and 4e) leaves the shortcut a clean
identity from any unit to any later one, ``x_L = x_l + sum of residuals`` (paper Eq. 4), and
trains deeper networks more easily. A final BN-ReLU follows the last unit, since its sum is
not normalised. Shortcuts that change shape are a bare strided 1x1 convolution of the
pre-activated input (as the paper's code).

The paper trains these on CIFAR first (``preact_resnet18_cifar`` ...: a 3x3 stride-1 stem);
the ImageNet variants have the 7x7/2 stem and max-pool. Stem convolutions are not followed by
BN-ReLU: the first unit's pre-activation is theirs. Parameter counts (tested)::

    model             1000 classes   10 classes    _cifar, 1000    _cifar, 10
    preact_resnet18     11,687,720   11,179,850      11,680,040    11,172,170
    preact_resnet34     21,795,880   21,288,010      21,788,200    21,280,330
    preact_resnet50     25,549,352   23,520,842      25,541,672    23,513,162

The ``_cifar`` twins' 3x3 stem has 7,680 fewer weights than the 7x7.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from ._base import ClassifierModel
from ._config import VariantConfig
from ._registry import (
    register_model,
    register_small_image_twins,
    register_variants,
    variant_builder,
)
from .layers import check_stages, init_conv_bn
from .resnet import conv1x1, conv3x3, residual_stages, stem_layers

__all__ = ["PreActBasicBlock", "PreActBottleneck", "PreActResNet"]

Stem = Literal["imagenet", "cifar"]


def shortcut_projection(in_chs: int, out_chs: int, stride: int) -> nn.Conv2d | None:
    """Identity (None) where the shape stays, else a strided 1x1 conv, no BN (paper's code)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return conv1x1(in_chs, out_chs, stride)


class PreActBasicBlock(nn.Module):
    """``x + conv3x3(relu(bn(conv3x3(relu(bn(x))))))``: two pre-activated 3x3 convs."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv3x3(in_chs, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut_projection(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))  # N x C_in x H x W
        # The identity shortcut takes x itself, untouched; a projection the pre-activated x.
        shortcut = x if self.downsample is None else self.downsample(pre)  # N x C_out x H/s x W/s
        out = self.conv1(pre)  # N x width x H/s x W/s
        out = self.conv2(self.relu(self.bn2(out)))  # N x C_out x H/s x W/s
        out += shortcut  # no ReLU after the sum: the next unit pre-activates it
        return out


class PreActBottleneck(nn.Module):
    """Pre-activated 1x1 reduce, 3x3 (strided), 1x1 expand by 4, added to the shortcut."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv1x1(in_chs, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut_projection(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))  # N x C_in x H x W
        shortcut = x if self.downsample is None else self.downsample(pre)  # N x 4w x H/s x W/s
        out = self.conv1(pre)  # N x w x H x W
        out = self.conv2(self.relu(self.bn2(out)))  # N x w x H/s x W/s
        out = self.conv3(self.relu(self.bn3(out)))  # N x 4w x H/s x W/s
        out += shortcut
        return out


Block = type[PreActBasicBlock] | type[PreActBottleneck]


class PreActResNet(ClassifierModel):
    """A stem conv, stages of pre-activation units, a final BN-ReLU, the classifier.

    Args:
        block: ``PreActBasicBlock`` or ``PreActBottleneck``.
        layers: units per stage (its length is the number of stages).
        num_classes: classifier width; 0 leaves the classifier out.
        in_chans: channels of the input images.
        channels: width per stage (before the bottleneck's 4x expansion); the stem has
            ``channels[0]``.
        stem: ``"cifar"``: one 3x3/1 conv (the paper's CIFAR networks, for 32x32 and 28x28
            images); ``"imagenet"``: 7x7/2 conv + 3x3/2 max-pool.
        drop_rate: dropout probability before the classifier (0 leaves it out).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512),
        stem: Stem = "imagenet",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_stages(layers, channels)
        self.num_classes = num_classes
        stem_chs = channels[0]
        self.conv1, self.maxpool, reduction, self.input_size = stem_layers(stem, in_chans, stem_chs)

        stages, self.feature_info = residual_stages(block, layers, channels, stem_chs, reduction)
        for info, stage in zip(self.feature_info, stages, strict=True):
            setattr(self, info.module, stage)
        in_chs, reduction = self.feature_info[-1].num_chs, self.feature_info[-1].reduction
        self.num_stages = len(layers)
        # The last unit's sum is not normalised: a final BN-ReLU before pooling (paper Fig. 4e).
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self.feature_info[-1] = self.feature_info[-1]._replace(module="act")
        self.num_features = in_chs
        self.min_input_size = (in_chans, reduction, reduction)

        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.fc = nn.Linear(in_chs, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs (fan-out, as ResNet's), unit BN; Linear keeps PyTorch's default."""
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final BN-ReLU map (N x 512 x 4 x 4 for preact_resnet18_cifar on 32 x 32)."""
        # N x in_chans x H x W
        x = self.maxpool(self.conv1(x))  # N x C_0 x H/4 x W/4 (cifar stem: H x W)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)  # feature_info[i]: num_chs x H/reduction
        return self.act(self.norm(x))  # N x num_features x H/reduction x W/reduction


# What the variant fixes (block, depth, stem) gives way to the caller's ``kwargs``.
_create = variant_builder(PreActResNet)


def _variant(name: str, block: Block, layers: tuple[int, ...], description: str):
    model_args = {"block": block, "layers": layers}
    return VariantConfig(name, "preact_resnet", model_args, description=description)


VARIANTS = register_variants(
    _variant("preact_resnet18", PreActBasicBlock, (2, 2, 2, 2),
             "Pre-activation ResNet-18: basic units, 2-2-2-2"),
    _variant("preact_resnet34", PreActBasicBlock, (3, 4, 6, 3),
             "Pre-activation ResNet-34: basic units, 3-4-6-3"),
    _variant("preact_resnet50", PreActBottleneck, (3, 4, 6, 3),
             "Pre-activation ResNet-50: bottleneck units, 3-4-6-3"),
)  # fmt: skip


@register_model
def preact_resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-18: basic units, 2-2-2-2, for 224 x 224 images."""
    return _create("preact_resnet18", num_classes, in_chans, kwargs)


@register_model
def preact_resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-34: basic units, 3-4-6-3, for 224 x 224 images."""
    return _create("preact_resnet34", num_classes, in_chans, kwargs)


@register_model
def preact_resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-50: bottleneck units, 3-4-6-3, for 224 x 224 images."""
    return _create("preact_resnet50", num_classes, in_chans, kwargs)


# preact_resnet18_cifar, ...: the 3x3 stride-1 stem of the paper's CIFAR networks.
globals().update(register_small_image_twins(VARIANTS, _create))
