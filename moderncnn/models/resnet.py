"""ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015).

Read top-down: the two residual units, the network, its builder, one entry point per
variant. Attribute names follow torchvision (``conv1``, ``bn1``, ``layer1``..., ``fc``,
``downsample``) so its checkpoints load unchanged; like torchvision's "ResNet v1.5" the
bottleneck downsamples in its 3x3 conv, not its first 1x1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from ._base import ClassifierModel, FeatureInfo
from ._registry import register_model

Stem = Literal["imagenet", "cifar"]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential | None:
    """The shortcut: identity, or a strided 1x1 conv + BN when stride or width change."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """The basic residual unit: two 3x3 convs, ``relu(x + F(x))`` (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1, **_: int) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = conv3x3(in_chs, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = projection(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4: depth at a quarter of the cost (ResNet-50+)."""

    expansion = 4

    def __init__(
        self, in_chs: int, width: int, stride: int = 1, groups: int = 1, width_per_group: int = 64
    ) -> None:
        super().__init__()
        inner = int(width * (width_per_group / 64.0)) * groups  # wider for ResNeXt/Wide ResNet
        out_chs = width * self.expansion
        self.conv1 = conv1x1(in_chs, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, inner, stride, groups)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(ClassifierModel):
    """A stem, then stages of residual units; each stage after the first halves the map.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: units per stage (its length is the number of stages).
        channels: width per stage (before the bottleneck's 4x expansion).
        stem: ``"imagenet"``: 7x7/2 conv + 3x3/2 max-pool (4x smaller map);
            ``"cifar"``: one 3x3/1 conv and no pooling, for 32x32 and 28x28 images.
        zero_init_residual: start each unit's last BN at zero so the unit begins as the
            identity (Goyal et al. 2017), which helps large-batch training.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512),
        stem: Stem = "imagenet",
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(channels) or not layers:
            raise ValueError(
                f"layers and channels need one entry per stage, got layers={list(layers)} "
                f"and channels={list(channels)}"
            )
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.num_classes = num_classes
        stem_chs = channels[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            reduction, self.input_size, self.min_input_size = 4, (3, 224, 224), (3, 32, 32)
        else:
            # He et al. 2016, section 4.2: on 32x32 CIFAR images a 4x-downsampling ImageNet stem
            # throws away most of the spatial detail and costs several points of accuracy.
            self.conv1 = conv3x3(in_chans, stem_chs)
            self.maxpool = nn.Identity()
            reduction, self.input_size, self.min_input_size = 1, (3, 32, 32), (3, 8, 8)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.relu = nn.ReLU(inplace=True)

        self.feature_info = []
        in_chs = stem_chs
        for i, (depth, width) in enumerate(zip(layers, channels, strict=True)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            units = [
                block(
                    in_chs if j == 0 else width * block.expansion,
                    width,
                    stride if j == 0 else 1,
                    groups=groups,
                    width_per_group=width_per_group,
                )
                for j in range(depth)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            in_chs = width * block.expansion
            self.feature_info.append(FeatureInfo(f"layer{i + 1}", in_chs, reduction))
        self.num_stages = len(layers)
        self.num_features = in_chs

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.fc = nn.Linear(in_chs, num_classes) if num_classes else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x H/4 x W/4 (imagenet)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)  # stage i+1: N x C_i x H/2^(i+2) ...
        return x


def _resnet(block: Block, depths: Sequence[int], **kwargs) -> ResNet:
    """Entry points fix depth; any constructor argument (even ``layers``) can override it."""
    return ResNet(block, **({"layers": depths} | kwargs))


@register_model
def resnet18(**kwargs) -> ResNet:
    return _resnet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    return _resnet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 8, 36, 3), **kwargs)


@register_model
def resnet18_cifar(**kwargs) -> ResNet:
    return _resnet(BasicBlock, (2, 2, 2, 2), stem="cifar", **kwargs)


@register_model
def resnet34_cifar(**kwargs) -> ResNet:
    return _resnet(BasicBlock, (3, 4, 6, 3), stem="cifar", **kwargs)


@register_model
def resnet50_cifar(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 6, 3), stem="cifar", **kwargs)


@register_model
def resnet101_cifar(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 23, 3), stem="cifar", **kwargs)


@register_model
def resnet152_cifar(**kwargs) -> ResNet:
    return _resnet(Bottleneck, (3, 8, 36, 3), stem="cifar", **kwargs)
