"""GoogLeNet (Inception v1), from "Going Deeper with Convolutions" (Szegedy et al., 2015).

Nine Inception blocks -- four parallel branches concatenated on channels -- with two
auxiliary classifiers on intermediate maps that add gradient signal during training.
State-dict keys and shapes are torchvision's ``googlenet``, so its checkpoints load.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError

from ._base import ClassifierModel, FeatureInfo
from ._config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    PretrainedWeights,
    VariantConfig,
)
from ._registry import (
    register_model,
    register_small_image_twins,
    register_variants,
    variant_builder,
)
from .layers import ConvBNAct, check_width_multiplier, scale_width

__all__ = [
    "AuxHead",
    "BLOCKS",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "InceptionBlock",
    "check_transform_input",
    "renormalize_imagenet",
]

# The TensorFlow-ported Inception weights used batch norm with eps=1e-3, not PyTorch's 1e-5.
BN_EPS = 1e-3
STEMS = ("imagenet", "cifar")
# x * std / 0.5 + (mean - 0.5) / 0.5 undoes the ImageNet normalisation and applies (x - 0.5) / 0.5;
# the constants are folded in double precision, as torchvision does.
_RENORM_SCALE = tuple(s / 0.5 for s in IMAGENET_STD)
_RENORM_SHIFT = tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN)


class GoogLeNetOutputs(NamedTuple):
    """What GoogLeNet returns in training mode with its aux heads (torchvision's field order)."""

    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


def renormalize_imagenet(x: Tensor) -> Tensor:
    """Map ImageNet-normalised input ``(x - mean) / std`` to ``(x - 0.5) / 0.5``.

    The Inception checkpoints ported from TensorFlow expect pixels scaled to [-1, 1];
    this lets them take input normalised with the usual ImageNet mean and std.
    """
    scale = x.new_tensor(_RENORM_SCALE).view(1, 3, 1, 1)
    shift = x.new_tensor(_RENORM_SHIFT).view(1, 3, 1, 1)
    return x * scale + shift


def check_transform_input(transform_input: bool, in_chans: int) -> None:
    """Reject ``transform_input`` for inputs that are not 3-channel ImageNet-normalised images."""
    if transform_input and in_chans != 3:
        raise ConfigError(
            f"transform_input=True re-normalises the 3 ImageNet RGB channels, got in_chans="
            f"{in_chans}; pass transform_input=False for {in_chans}-channel input"
        )


def check_inception_args(
    stem: str, width_multiplier: float, transform_input: bool, in_chans: int
) -> Callable[[int], int]:
    """Check the arguments every Inception-family model takes (a ConfigError naming the bad
    one); returns ``w``, the family's width rule: channels -> channels x width_multiplier."""
    if stem not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {stem!r}")
    check_width_multiplier(width_multiplier)
    check_transform_input(transform_input, in_chans)
    return partial(scale_width, width_multiplier=width_multiplier)


class InceptionBlock(nn.Module):
    """Inception v1 block: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 max-pool -> 1x1, concatenated.

    torchvision's ``Inception``; its four branches are ``branch1`` ... ``branch4``.
    The 1x1 "reduce" convolutions shrink channels before the expensive convolutions
    (paper Sec. 4). ``branch3_kernel_size`` is the kernel of the "5x5" branch: torchvision's
    port uses 3 (pytorch/vision#906) and its checkpoints need it; 5 is the paper's.
    """

    def __init__(
        self,
        in_chs: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
        branch3_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        k = branch3_kernel_size
        self.branch1 = ConvBNAct(in_chs, ch1x1, 1, bn_eps=BN_EPS)
        self.branch2 = nn.Sequential(
            ConvBNAct(in_chs, ch3x3_reduce, 1, bn_eps=BN_EPS),
            ConvBNAct(ch3x3_reduce, ch3x3, 3, padding=1, bn_eps=BN_EPS),
        )
        self.branch3 = nn.Sequential(
            ConvBNAct(in_chs, ch5x5_reduce, 1, bn_eps=BN_EPS),
            ConvBNAct(ch5x5_reduce, ch5x5, k, padding=k // 2, bn_eps=BN_EPS),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            ConvBNAct(in_chs, pool_proj, 1, bn_eps=BN_EPS),
        )
        self.out_chs = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        # Shapes for inception3b: N x 256 x 28 x 28 in
        b1 = self.branch1(x)  # N x 128 x 28 x 28
        b2 = self.branch2(x)  # N x 128 -> 192 x 28 x 28
        b3 = self.branch3(x)  # N x 32 -> 96 x 28 x 28
        b4 = self.branch4(x)  # N x 256 -> 64 x 28 x 28
        return torch.cat([b1, b2, b3, b4], 1)  # N x 480 x 28 x 28


class AuxHead(nn.Module):
    """Auxiliary classifier on an intermediate map (paper Sec. 5; torchvision's ``InceptionAux``).

    Used only in training, on inception4a (``aux1``) and inception4d (``aux2``): average pool
    to 4 x 4 (adaptive, so any map size works), 1x1 conv to ``conv_chs`` (128) channels, then
    fc to ``hidden`` (1024) -> dropout -> fc to the classes.
    """

    classifier_name = "fc2"

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        dropout: float = 0.7,
        conv_chs: int = 128,
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_chs, conv_chs, 1, bn_eps=BN_EPS)
        self.fc1 = nn.Linear(conv_chs * 4 * 4, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        hidden = self.fc1.out_features
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # aux1: N x 512 x 4 x 4, aux2: N x 528 x 4 x 4
        x = torch.flatten(self.conv(x), 1)  # N x 2048
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # N x 1024
        return self.fc2(x)  # N x num_classes


# Channels of the nine blocks, paper Table 1: 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj.
BLOCKS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(ClassifierModel):
    """GoogLeNet / Inception v1 with torchvision's module names.

    Args:
        num_classes: classifier width; 0 leaves the classifiers out (pooled features).
        in_chans: input channels.
        aux_logits: build the two auxiliary heads; in training mode ``forward`` then returns
            :class:`GoogLeNetOutputs` (weight the aux losses, 0.3 in the paper, in the loss).
        transform_input: re-normalise ImageNet-normalised input to the ``(x - 0.5) / 0.5``
            the ported checkpoints expect (see :func:`renormalize_imagenet`); 3 channels only.
        dropout: dropout before the final classifier (torchvision 0.2; the paper's 0.4).
        dropout_aux: dropout inside the aux heads.
        stem: ``"imagenet"`` (7x7/2 conv and two max-pools) or ``"cifar"`` for small images.
        branch3_kernel_size: kernel of the "5x5" branch: 3 as in torchvision's checkpoints
            (a porting quirk, pytorch/vision#906) or 5 as in the paper.
        width_multiplier: scales the channels of every convolution, branch and aux head
            (:func:`~moderncnn.models.layers.scale_width`: to a multiple of 8); 1.0 is the paper's.
            ``googlenet_cifar(num_classes=10, in_chans=1, width_multiplier=0.3)``, for
            28 x 28 images, has 0.91M parameters with its aux heads (0.51M without).
    """

    aux_head_names = ("aux1", "aux2")

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        stem: str = "imagenet",
        branch3_kernel_size: int = 3,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        w = check_inception_args(stem, width_multiplier, transform_input, in_chans)
        if branch3_kernel_size not in (3, 5):
            raise ConfigError(
                f"branch3_kernel_size must be 3 (torchvision) or 5 (paper), "
                f"got {branch3_kernel_size!r}"
            )
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        small = stem == "cifar"

        if small:
            # The ImageNet stem downsamples 8x before the first Inception block, which leaves a
            # 4x4 map from a 32x32 image; small images keep full resolution (3x3/1, no pools).
            self.conv1 = ConvBNAct(in_chans, w(64), 3, padding=1, bn_eps=BN_EPS)
            self.maxpool1: nn.Module = nn.Identity()
        else:
            self.conv1 = ConvBNAct(in_chans, w(64), 7, stride=2, padding=3, bn_eps=BN_EPS)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvBNAct(w(64), w(64), 1, bn_eps=BN_EPS)
        self.conv3 = ConvBNAct(w(64), w(192), 3, padding=1, bn_eps=BN_EPS)
        self.maxpool2: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, 2, ceil_mode=True)

        chs, out_chs = w(192), {}
        for name, widths in BLOCKS.items():
            block = InceptionBlock(chs, *map(w, widths), branch3_kernel_size=branch3_kernel_size)
            setattr(self, name, block)
            chs = out_chs[name] = block.out_chs
            if name == "inception3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif name == "inception4e":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.num_features = chs

        def aux(tap: str) -> AuxHead | None:
            if not aux_logits:
                return None
            return AuxHead(out_chs[tap], num_classes, dropout_aux, w(128), w(1024))

        self.aux1 = aux("inception4a")
        self.aux2 = aux("inception4d")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        # Strides of the stage maps; the small-image stem keeps stride 1 up to inception3b.
        strides = (1, 1, 1, 2, 4) if small else (2, 4, 8, 16, 32)
        stages = [("conv1", w(64)), ("conv3", w(192))]
        stages += [(name, out_chs[name]) for name in ("inception3b", "inception4e", "inception5b")]
        self.feature_info = [
            FeatureInfo(name, chs, r) for (name, chs), r in zip(stages, strides, strict=True)
        ]
        self.input_size = (in_chans, 32, 32) if small else (in_chans, 224, 224)
        # Measured in training mode with the aux heads: the smallest input every pool accepts.
        self.min_input_size = (in_chans, 2, 2) if small else (in_chans, 15, 15)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so training from scratch follows its recipe.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last Inception block's map (N x 1024 x 7 x 7 for a 224 x 224 image)."""
        return self._features(x, with_aux=False)[0]

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        """Logits; in training mode with aux heads, :class:`GoogLeNetOutputs`."""
        with_aux = self.training and self.aux_logits
        x, aux1, aux2 = self._features(x, with_aux)
        logits = self.forward_head(x)
        if with_aux:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def _features(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Final feature map, plus the two aux heads' logits when ``with_aux``."""
        if self.transform_input:
            x = renormalize_imagenet(x)
        aux1 = aux2 = None
        # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        x = self.maxpool2(x)  # N x 192 x 28 x 28
        x = self.inception3a(x)  # N x 256 x 28 x 28
        x = self.inception3b(x)  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        if with_aux:
            aux1 = self.aux1(x)  # N x num_classes
        x = self.inception4b(x)  # N x 512 x 14 x 14
        x = self.inception4c(x)  # N x 512 x 14 x 14
        x = self.inception4d(x)  # N x 528 x 14 x 14
        if with_aux:
            aux2 = self.aux2(x)  # N x num_classes
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5a(x)  # N x 832 x 7 x 7
        x = self.inception5b(x)  # N x 1024 x 7 x 7
        return x, aux1, aux2


# What the variant fixes (the stem) gives way to the caller's ``kwargs``.
_create = variant_builder(GoogLeNet)


VARIANTS = register_variants(
    VariantConfig(
        "googlenet",
        "googlenet",
        weights={
            # Ported from TensorFlow: the weights take (x - 0.5) / 0.5 (transform_input); their
            # aux heads were never trained.
            "IMAGENET1K_V1": PretrainedWeights(
                "googlenet-1378be20.pth",
                transform_input=True,
                aux_trained=False,
                mean=INCEPTION_MEAN,
                std=INCEPTION_STD,
            )
        },
        aux_heads=GoogLeNet.aux_head_names,
        description="GoogLeNet (Inception v1), torchvision-compatible",
    )
)


@register_model
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1), torchvision-compatible, for 224 x 224 images."""
    return _create("googlenet", num_classes, in_chans, kwargs)


# googlenet_cifar: a 3x3 stride-1 stem and no stem pooling, for 32 x 32 images.
globals().update(register_small_image_twins(VARIANTS, _create))
