"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), with
ResNeXt (Xie et al. 2017: grouped bottleneck 3x3s) and Wide ResNet (Zagoruyko & Komodakis 2016:
wider bottleneck 3x3s), which are the same network with other ``groups`` / ``width_per_group``.

Read top-down: the two residual units, the network, the variant table, one entry point per
variant. Attribute names follow torchvision (``conv1``, ``bn1``, ``layer1``..., ``fc``,
``downsample``) so its checkpoints load unchanged; like torchvision's "ResNet v1.5" the
bottleneck downsamples in its 3x3 conv, not its first 1x1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from moderncnn.io.errors import ConfigError

from ._base import ClassifierModel, FeatureInfo
from ._config import PretrainedWeights, VariantConfig
from ._registry import (
    register_model,
    register_small_image_twins,
    register_variants,
    variant_builder,
)
from .layers import check_stages, init_conv_bn

Stem = Literal["imagenet", "cifar"]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential | None:
    """The shortcut: identity, or a strided 1x1 conv + BN when stride or width change.

    He et al. 2016 option (B): project only where the shapes differ, since identity
    shortcuts cost nothing and projections everywhere gain little.
    """
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """The basic residual unit: two 3x3 convs, ``relu(x + F(x))`` (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_chs: int, width: int, stride: int = 1, groups: int = 1, width_per_group: int = 64
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ConfigError(
                "BasicBlock has no grouped or widened 3x3 (ResNeXt/Wide ResNet need Bottleneck), "
                f"got groups={groups}, width_per_group={width_per_group}"
            )
        out_chs = width * self.expansion
        self.conv1 = conv3x3(in_chs, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = projection(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # N x C_out x H/s x W/s
        out = self.relu(self.bn1(self.conv1(x)))  # N x width x H/s x W/s
        out = self.bn2(self.conv2(out))  # N x C_out x H/s x W/s
        out += shortcut  # in place, as torchvision: no extra map-sized buffer per block
        return self.relu(out)


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
        shortcut = x if self.downsample is None else self.downsample(x)  # N x 4w x H/s x W/s
        out = self.relu(self.bn1(self.conv1(x)))  # N x inner x H x W
        out = self.relu(self.bn2(self.conv2(out)))  # N x inner x H/s x W/s
        out = self.bn3(self.conv3(out))  # N x 4w x H/s x W/s
        out += shortcut  # in place, as torchvision: no extra map-sized buffer per block
        return self.relu(out)


def stem_layers(
    stem: Stem, in_chans: int, stem_chs: int
) -> tuple[nn.Conv2d, nn.Module, int, tuple[int, int, int]]:
    """(first conv, pool, its reduction, the input size it is made for) of a ResNet stem."""
    if stem == "imagenet":
        conv = nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False)
        return conv, nn.MaxPool2d(3, stride=2, padding=1), 4, (in_chans, 224, 224)
    if stem == "cifar":
        # He et al. 2016, section 4.2 (CIFAR-10 ResNets): the first layer is a 3x3 conv on
        # the full 32x32 image (stages at 32, 16, 8). The ImageNet stem would shrink it 4x to
        # 8x8 before the first unit, discarding most of its spatial detail.
        return conv3x3(in_chans, stem_chs), nn.Identity(), 1, (in_chans, 32, 32)
    raise ConfigError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")


def residual_stages(
    block: Any,
    layers: Sequence[int],
    channels: Sequence[int],
    in_chs: int,
    reduction: int,
    **block_kwargs: Any,
) -> tuple[list[nn.Sequential], list[FeatureInfo]]:
    """The stages ``layer1``, ``layer2``, ...: ``layers[i]`` units of ``block`` at width
    ``channels[i]``; every stage after the first starts at stride 2."""
    stages, feature_info = [], []
    for i, (depth, width) in enumerate(zip(layers, channels, strict=True)):
        stride = 1 if i == 0 else 2
        reduction *= stride
        out_chs = width * block.expansion
        units = [
            block(in_chs if j == 0 else out_chs, width, stride if j == 0 else 1, **block_kwargs)
            for j in range(depth)
        ]
        stages.append(nn.Sequential(*units))
        feature_info.append(FeatureInfo(f"layer{i + 1}", out_chs, reduction))
        in_chs = out_chs
    return stages, feature_info


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(ClassifierModel):
    """A stem, then stages of residual units; each stage after the first halves the map.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: units per stage (its length is the number of stages).
        num_classes: classifier width; 0 leaves the classifier out.
        in_chans: channels of the input images.
        channels: width per stage (before the bottleneck's 4x expansion); the stem has
            ``channels[0]``.
        stem: ``"imagenet"``: 7x7/2 conv + 3x3/2 max-pool (4x smaller map);
            ``"cifar"``: one 3x3/1 conv and no pooling, for 32x32 and 28x28 images.
        zero_init_residual: start each unit's last BN at zero so the unit begins as the
            identity (Goyal et al. 2017), which helps large-batch training.
        groups: groups of each bottleneck 3x3 (ResNeXt); ``Bottleneck`` only.
        width_per_group: bottleneck 3x3 width per group, 64 is ResNet's; ``Bottleneck`` only.
        drop_rate: dropout probability before the classifier (0 leaves it out, as torchvision).
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
        check_stages(layers, channels)
        self.num_classes = num_classes
        stem_chs = channels[0]
        self.conv1, self.maxpool, reduction, self.input_size = stem_layers(stem, in_chans, stem_chs)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.relu = nn.ReLU(inplace=True)

        stages, self.feature_info = residual_stages(
            block, layers, channels, stem_chs, reduction,
            groups=groups, width_per_group=width_per_group,
        )  # fmt: skip
        for info, stage in zip(self.feature_info, stages, strict=True):
            setattr(self, info.module, stage)
        in_chs, reduction = self.feature_info[-1].num_chs, self.feature_info[-1].reduction
        self.num_stages = len(layers)
        self.num_features = in_chs
        # Every conv is padded, so any size runs; at the total stride the last map is 1 x 1 and
        # each stage's map is input / reduction, as feature_info states.
        self.min_input_size = (in_chans, reduction, reduction)

        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.fc = nn.Linear(in_chs, num_classes) if num_classes else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's: He-normal convs (fan-out), unit BN; Linear keeps PyTorch's default."""
        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map (N x 2048 x 7 x 7 for ResNet-50 on a 224 x 224 image)."""
        # N x in_chans x H x W
        x = self.relu(self.bn1(self.conv1(x)))  # N x C_0 x H/2 x W/2 (cifar stem: H x W)
        x = self.maxpool(x)  # N x C_0 x H/4 x W/4 (cifar stem: H x W)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)  # feature_info[i]: num_chs x H/reduction
        return x


# What the variant fixes (block, depth, groups, stem) gives way to the caller's ``kwargs``.
_create = variant_builder(ResNet)


def _variant(
    name: str, block: Block, layers: tuple[int, ...], description: str, weights: dict, **args
) -> VariantConfig:
    model_args = {"block": block, "layers": layers, **args}
    return VariantConfig(name, "resnet", model_args, weights=weights, description=description)


def _tv(v1: str, v2: str | None = None, v1_resize: int = 256) -> dict[str, PretrainedWeights]:
    """torchvision's files: IMAGENET1K_V2 (the newer recipe, resize 232) first when it exists."""
    weights = {"IMAGENET1K_V2": PretrainedWeights(v2, resize_size=232)} if v2 else {}
    return weights | {"IMAGENET1K_V1": PretrainedWeights(v1, resize_size=v1_resize)}


B, BB = BasicBlock, Bottleneck
# The variant table: depths, groups and bottleneck widths, torchvision's ImageNet weights.
# ResNeXt "32x4d": 32 groups of 4 channels in the first stage's 3x3 (Xie et al. 2017);
# Wide ResNet "_2": the bottleneck 3x3 twice as wide (Zagoruyko & Komodakis 2016).
VARIANTS = register_variants(
    _variant("resnet18", B, (2, 2, 2, 2), "ResNet-18: basic units, 2-2-2-2",
             _tv("resnet18-f37072fd.pth")),
    _variant("resnet34", B, (3, 4, 6, 3), "ResNet-34: basic units, 3-4-6-3",
             _tv("resnet34-b627a593.pth")),
    _variant("resnet50", BB, (3, 4, 6, 3), "ResNet-50: bottleneck units, 3-4-6-3",
             _tv("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")),
    _variant("resnet101", BB, (3, 4, 23, 3), "ResNet-101: bottleneck units, 3-4-23-3",
             _tv("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth")),
    _variant("resnet152", BB, (3, 8, 36, 3), "ResNet-152: bottleneck units, 3-8-36-3",
             _tv("resnet152-394f9c45.pth", "resnet152-f82ba261.pth")),
    _variant("resnext50_32x4d", BB, (3, 4, 6, 3),
             "ResNeXt-50 32x4d: grouped bottlenecks (32 groups x 4 channels), 3-4-6-3",
             _tv("resnext50_32x4d-7cdf4587.pth", "resnext50_32x4d-1a0047aa.pth"),
             groups=32, width_per_group=4),
    _variant("resnext101_32x8d", BB, (3, 4, 23, 3),
             "ResNeXt-101 32x8d: grouped bottlenecks (32 groups x 8 channels), 3-4-23-3",
             _tv("resnext101_32x8d-8ba56ff5.pth", "resnext101_32x8d-110c445d.pth"),
             groups=32, width_per_group=8),
    _variant("resnext101_64x4d", BB, (3, 4, 23, 3),
             "ResNeXt-101 64x4d: grouped bottlenecks (64 groups x 4 channels), 3-4-23-3",
             _tv("resnext101_64x4d-173b62eb.pth", v1_resize=232),
             groups=64, width_per_group=4),
    _variant("wide_resnet50_2", BB, (3, 4, 6, 3),
             "Wide ResNet-50-2: bottleneck 3x3s twice as wide, 3-4-6-3",
             _tv("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
             width_per_group=128),
    _variant("wide_resnet101_2", BB, (3, 4, 23, 3),
             "Wide ResNet-101-2: bottleneck 3x3s twice as wide, 3-4-23-3",
             _tv("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth"),
             width_per_group=128),
)  # fmt: skip


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18: basic units, 2-2-2-2, for 224 x 224 images."""
    return _create("resnet18", num_classes, in_chans, kwargs)


@register_model
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-34: basic units, 3-4-6-3, for 224 x 224 images."""
    return _create("resnet34", num_classes, in_chans, kwargs)


@register_model
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50: bottleneck units, 3-4-6-3, for 224 x 224 images."""
    return _create("resnet50", num_classes, in_chans, kwargs)


@register_model
def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-101: bottleneck units, 3-4-23-3, for 224 x 224 images."""
    return _create("resnet101", num_classes, in_chans, kwargs)


@register_model
def resnet152(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-152: bottleneck units, 3-8-36-3, for 224 x 224 images."""
    return _create("resnet152", num_classes, in_chans, kwargs)


@register_model
def resnext50_32x4d(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of 4 channels, 3-4-6-3, for 224 x 224."""
    return _create("resnext50_32x4d", num_classes, in_chans, kwargs)


@register_model
def resnext101_32x8d(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of 8 channels, 3-4-23-3, for 224 x 224 images."""
    return _create("resnext101_32x8d", num_classes, in_chans, kwargs)


@register_model
def resnext101_64x4d(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNeXt-101 64x4d: 64 groups of 4 channels, 3-4-23-3, for 224 x 224 images."""
    return _create("resnext101_64x4d", num_classes, in_chans, kwargs)


@register_model
def wide_resnet50_2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): 2x wider 3x3s, 3-4-6-3, for 224 x 224."""
    return _create("wide_resnet50_2", num_classes, in_chans, kwargs)


@register_model
def wide_resnet101_2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """Wide ResNet-101-2: bottleneck 3x3s twice as wide, 3-4-23-3, for 224 x 224 images."""
    return _create("wide_resnet101_2", num_classes, in_chans, kwargs)


# Small-image variants (resnet18_cifar, ...): the same networks with the 3x3 stride-1 stem and
# no max-pool, made from the table by the rule every family shares.
globals().update(register_small_image_twins(VARIANTS, _create))
