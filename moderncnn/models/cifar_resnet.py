"""The CIFAR networks of the ResNet papers: ResNet-20 ... ResNet-1202 and their plain twins
(He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2), and
pre-activation ResNet-110 and -164 (He et al., "Identity Mappings in Deep Residual Networks",
ECCV 2016, section 4).

These are not the ImageNet ResNets with a small stem (``resnet18_cifar``: 11M parameters): a
3x3 conv to 16 channels, then three stages of ``n`` units at 16, 32 and 64 channels on 32, 16
and 8 pixel maps, global average pooling and the classifier: ``6n + 2`` weighted layers, 0.27M
to 19.4M parameters. The plain networks (``plain20`` ...) are the same stacks without any
shortcut: the paper's baselines, whose training error *rises* with depth (its Fig. 6, the
degradation problem), while the residual ones' falls.

Shortcuts where a stage doubles the channels and halves the map (paper section 3.3):
option (A), the default, is the identity on every second pixel with the new channels zero
(no parameters, as the paper's CIFAR networks); option (B) projects with a strided 1x1 conv +
BN (``shortcut="B"``). Parameter counts (tested; the papers' Table 6 and Table 2 round them)::

    model              10 classes   paper      model              10 classes   paper
    resnet20              269,722   0.27M      resnet110           1,727,962   1.7M
    resnet32              464,154   0.46M      resnet1202         19,421,274   19.4M
    resnet44              658,586   0.66M      preact_resnet110    1,730,522   1.7M
    resnet56              853,018   0.85M      preact_resnet164    1,703,258   1.7M

``plainN`` has ``resnetN``'s parameters (option A adds none); option B adds two strided
1x1 convs + BN: ResNet-20 272,474.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError

from ._base import ClassifierModel, FeatureInfo
from ._config import SMALL_IMAGE_SIZE, VariantConfig
from ._registry import get_variant_config, register_model, register_variants
from .layers import check_stages, init_conv_bn
from .preact_resnet import PreActBasicBlock, PreActBottleneck, PreActResNet
from .resnet import conv3x3, projection

__all__ = ["CifarBasicBlock", "CifarResNet", "ZeroPadShortcut"]

Shortcut = Literal["A", "B", "none"]
STAGE_CHANNELS = (16, 32, 64)  # the paper's widths: 16, 32, 64 filters on 32, 16, 8 px maps


class ZeroPadShortcut(nn.Module):
    """Option (A): the identity on every ``stride``-th pixel, the extra channels zero.

    No parameters: the paper's CIFAR networks use it so that a ResNet has exactly its plain
    twin's parameters.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ConfigError(f"zero padding cannot drop channels: {in_chs} -> {out_chs}")
        self.extra, self.stride = out_chs - in_chs, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # N x C_in x H/s x W/s
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # N x C_out x H/s x W/s


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with BN, ``relu(x + F(x))``; with ``shortcut="none"``, ``relu(F(x))``.

    Args:
        in_chs, out_chs: channels in and out.
        stride: of the first conv (2 where a stage starts).
        shortcut: ``"A"`` (zero padding where the shape changes), ``"B"`` (projection where
            it changes) or ``"none"`` (a plain network's unit: no shortcut at all).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: Shortcut = "A"):
        super().__init__()
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.residual = shortcut != "none"
        reshapes = stride != 1 or in_chs != out_chs
        self.downsample: nn.Module | None = None
        if shortcut == "A" and reshapes:
            self.downsample = ZeroPadShortcut(in_chs, out_chs, stride)
        elif shortcut == "B":
            self.downsample = projection(in_chs, out_chs, stride)  # None where none is needed

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # N x C_out x H/s x W/s
        out = self.bn2(self.conv2(out))  # N x C_out x H/s x W/s
        if self.residual:  # H(x) = F(x) + x: the unit only learns the residual F
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class CifarResNet(ClassifierModel):
    """A 3x3 stem, stages of basic units (three: 16, 32, 64 channels), the classifier.

    Args:
        layers: units per stage, ``(n, n, n)`` in the paper: ``6n + 2`` weighted layers.
        num_classes: classifier width; 0 leaves the classifier out.
        in_chans: channels of the input images.
        shortcut: ``"A"``, ``"B"`` or ``"none"`` (the plain network), see
            :class:`CifarBasicBlock`.
        channels: width per stage.
        stem: only ``"cifar"``, the paper's 3x3 stride-1 conv (an argument because every
            variant states its stem; for an ImageNet stem take ``resnet18`` ...).
        drop_rate: dropout probability before the classifier (0, as the paper: none).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 3, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        shortcut: Shortcut = "A",
        channels: Sequence[int] = STAGE_CHANNELS,
        stem: Literal["cifar"] = "cifar",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem != "cifar":
            raise ConfigError(
                f"the CIFAR ResNets have only the paper's 3x3 stem ('cifar'), got {stem!r}; "
                "for an ImageNet stem use resnet18, resnet34, ..."
            )
        if shortcut not in ("A", "B", "none"):
            raise ConfigError(f"shortcut must be 'A', 'B' or 'none', got {shortcut!r}")
        check_stages(layers, channels)
        self.num_classes = num_classes
        self.shortcut = shortcut
        self.input_size = (in_chans, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE)
        # Paper section 4.2: the first layer is a 3x3 conv on the whole 32 x 32 image.
        self.conv1 = conv3x3(in_chans, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)

        self.feature_info = []
        in_chs, reduction = channels[0], 1
        for i, (depth, width) in enumerate(zip(layers, channels, strict=True)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            units = [
                CifarBasicBlock(in_chs if j == 0 else width, width, stride if j == 0 else 1,
                                shortcut)
                for j in range(depth)
            ]  # fmt: skip
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            self.feature_info.append(FeatureInfo(f"layer{i + 1}", width, reduction))
            in_chs = width
        self.num_stages = len(channels)
        self.num_features = in_chs
        self.min_input_size = (in_chans, reduction, reduction)  # every conv is padded

        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.fc = nn.Linear(in_chs, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs (the paper's reference [13]), unit BN; Linear keeps PyTorch's."""
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map (N x 64 x 8 x 8 on a 32 x 32 image)."""
        # N x in_chans x 32 x 32
        x = self.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)  # N x 16 x 32 x 32, 32 x 16 x 16, 64 x 8 x 8
        return x


def _create(name: str, num_classes: int, in_chans: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """What the variant fixes (depth, shortcut, block) gives way to the caller's ``kwargs``."""
    config = get_variant_config(name)
    model_class = PreActResNet if config.family == "preact_resnet" else CifarResNet
    return model_class(num_classes=num_classes, in_chans=in_chans, **config.build_args(kwargs))


def _variant(name: str, description: str, family: str = "cifar_resnet", **args) -> VariantConfig:
    """A network designed for 32 x 32 images: the small stem is its own, not a twin's."""
    return VariantConfig(
        name, family, args, stem="cifar", input_size=(3, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE),
        description=description,
    )  # fmt: skip


def _depth_variants(prefix: str, shortcut: Shortcut, depths: tuple[int, ...]) -> list:
    kind = "residual units, option-A shortcuts" if shortcut == "A" else "no shortcuts (plain)"
    return [
        _variant(f"{prefix}{d}", f"{prefix.capitalize()}-{d} (He et al. 2016, CIFAR): 3 stages "
                 f"of {(d - 2) // 6} basic units at 16/32/64 channels, {kind}",
                 layers=((d - 2) // 6,) * 3, shortcut=shortcut)
        for d in depths
    ]  # fmt: skip


# The variant table: depth = 6n + 2 (n units per stage); the paper's Table 6 and Fig. 6.
_PREACT = {"family": "preact_resnet", "channels": STAGE_CHANNELS}
VARIANTS = register_variants(
    *_depth_variants("resnet", "A", (20, 32, 44, 56, 110, 1202)),
    *_depth_variants("plain", "none", (20, 32, 44, 56, 110)),
    _variant("preact_resnet110", "Pre-activation ResNet-110 (He et al. 2016, Identity Mappings, "
             "CIFAR): 3 stages of 18 basic units at 16/32/64 channels",
             block=PreActBasicBlock, layers=(18, 18, 18), **_PREACT),
    _variant("preact_resnet164", "Pre-activation ResNet-164 (He et al. 2016, Identity Mappings, "
             "CIFAR): 3 stages of 18 bottleneck units at 64/128/256 channels",
             block=PreActBottleneck, layers=(18, 18, 18), **_PREACT),
)  # fmt: skip


@register_model
def resnet20(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-20 (CIFAR): 3 x 3 basic units, 0.27M parameters, for 32 x 32 images."""
    return _create("resnet20", num_classes, in_chans, kwargs)


@register_model
def resnet32(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-32 (CIFAR): 3 x 5 basic units, 0.46M parameters, for 32 x 32 images."""
    return _create("resnet32", num_classes, in_chans, kwargs)


@register_model
def resnet44(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-44 (CIFAR): 3 x 7 basic units, 0.66M parameters, for 32 x 32 images."""
    return _create("resnet44", num_classes, in_chans, kwargs)


@register_model
def resnet56(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-56 (CIFAR): 3 x 9 basic units, 0.85M parameters, for 32 x 32 images."""
    return _create("resnet56", num_classes, in_chans, kwargs)


@register_model
def resnet110(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-110 (CIFAR): 3 x 18 basic units, 1.7M parameters, for 32 x 32 images."""
    return _create("resnet110", num_classes, in_chans, kwargs)


@register_model
def resnet1202(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """ResNet-1202 (CIFAR): 3 x 200 basic units, 19.4M parameters, for 32 x 32 images."""
    return _create("resnet1202", num_classes, in_chans, kwargs)


@register_model
def plain20(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """Plain-20 (CIFAR): ResNet-20 without shortcuts, the paper's baseline."""
    return _create("plain20", num_classes, in_chans, kwargs)


@register_model
def plain32(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """Plain-32 (CIFAR): ResNet-32 without shortcuts, the paper's baseline."""
    return _create("plain32", num_classes, in_chans, kwargs)


@register_model
def plain44(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """Plain-44 (CIFAR): ResNet-44 without shortcuts, the paper's baseline."""
    return _create("plain44", num_classes, in_chans, kwargs)


@register_model
def plain56(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """Plain-56 (CIFAR): ResNet-56 without shortcuts, the paper's baseline."""
    return _create("plain56", num_classes, in_chans, kwargs)


@register_model
def plain110(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> CifarResNet:
    """Plain-110 (CIFAR): ResNet-110 without shortcuts (the paper's deepest plain net is 56)."""
    return _create("plain110", num_classes, in_chans, kwargs)


@register_model
def preact_resnet110(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-110 (CIFAR): 3 x 18 basic units, 1.7M parameters, 32 x 32."""
    return _create("preact_resnet110", num_classes, in_chans, kwargs)


@register_model
def preact_resnet164(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-164 (CIFAR): 3 x 18 bottleneck units, 1.7M parameters, 32 x 32."""
    return _create("preact_resnet164", num_classes, in_chans, kwargs)
