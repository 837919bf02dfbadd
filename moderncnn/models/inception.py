"""Inception v3, from "Rethinking the Inception Architecture for Computer Vision" (2016).

Inception v1's blocks with their large convolutions factorised into cheaper ones: a 5x5 into
two stacked 3x3 (Inception v2, paper Fig. 5), an n x n into 1 x n then n x 1 (Fig. 6), and
grid-size reductions that pool and convolve with stride 2 in parallel (Fig. 10). State-dict
keys and shapes are torchvision's ``inception_v3``; the block docstrings map its class names
(``InceptionA`` ... ``InceptionE``) and attribute names (``Mixed_5b`` ...) to the paper.
Shape comments are for a 299 x 299 input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ClassifierModel, FeatureInfo
from ._config import INCEPTION_MEAN, INCEPTION_STD, PretrainedWeights, VariantConfig
from ._registry import (
    register_model,
    register_small_image_twins,
    register_variants,
    variant_builder,
)
from .googlenet import BN_EPS, check_inception_args, renormalize_imagenet
from .layers import ConvBNAct, scale_width

__all__ = [
    "AuxHead",
    "GridReduction",
    "GridReductionAsymmetric",
    "InceptionAsymmetric",
    "InceptionExpanded",
    "InceptionFactorized",
    "InceptionOutputs",
    "InceptionV3",
]


class InceptionOutputs(NamedTuple):
    """What Inception v3 returns in training mode with its aux head (torchvision's order)."""

    logits: Tensor
    aux_logits: Tensor


def _conv(in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], **kwargs) -> ConvBNAct:
    return ConvBNAct(in_chs, out_chs, kernel_size, bn_eps=BN_EPS, **kwargs)


class InceptionFactorized(nn.Module):
    """torchvision's ``InceptionA`` (Mixed_5b-d, the 35 x 35 blocks; paper Fig. 5).

    Branches: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 (``branch3x3dbl``: the Inception v2
    factorisation of a 5x5 into two stacked 3x3, 28% cheaper) | 3x3 avg-pool -> 1x1.
    """

    def __init__(self, in_chs: int, pool_features: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c64, c48, c96 = (scale_width(c, width_multiplier) for c in (64, 48, 96))
        pool_chs = scale_width(pool_features, width_multiplier)
        self.branch1x1 = _conv(in_chs, c64, 1)
        self.branch5x5_1 = _conv(in_chs, c48, 1)
        self.branch5x5_2 = _conv(c48, c64, 5, padding=2)
        self.branch3x3dbl_1 = _conv(in_chs, c64, 1)
        self.branch3x3dbl_2 = _conv(c64, c96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(c96, c96, 3, padding=1)
        self.branch_pool = _conv(in_chs, pool_chs, 1)
        self.out_chs = 2 * c64 + c96 + pool_chs

    def forward(self, x: Tensor) -> Tensor:
        # N x 192 x 35 x 35 in (Mixed_5b)
        b1x1 = self.branch1x1(x)  # N x 64 x 35 x 35
        b5x5 = self.branch5x5_1(x)  # N x 48 x 35 x 35
        b5x5 = self.branch5x5_2(b5x5)  # N x 64 x 35 x 35
        b3x3dbl = self.branch3x3dbl_1(x)  # N x 64 x 35 x 35
        b3x3dbl = self.branch3x3dbl_2(b3x3dbl)  # N x 96 x 35 x 35
        b3x3dbl = self.branch3x3dbl_3(b3x3dbl)  # N x 96 x 35 x 35
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # N x 192 x 35 x 35
        pool = self.branch_pool(pool)  # N x pool_features x 35 x 35
        return torch.cat([b1x1, b5x5, b3x3dbl, pool], 1)  # N x (224 + pool_features) x 35 x 35


class GridReduction(nn.Module):
    """torchvision's ``InceptionB`` (Mixed_6a): halves the grid, 35 x 35 -> 17 x 17 (Fig. 10).

    A stride-2 convolution and a stride-2 pool run in parallel and are concatenated, which
    avoids both the representational bottleneck of pooling first and the cost of
    convolving first (paper Sec. 5).
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c384, c64, c96 = (scale_width(c, width_multiplier) for c in (384, 64, 96))
        self.branch3x3 = _conv(in_chs, c384, 3, stride=2)
        self.branch3x3dbl_1 = _conv(in_chs, c64, 1)
        self.branch3x3dbl_2 = _conv(c64, c96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(c96, c96, 3, stride=2)
        self.out_chs = c384 + c96 + in_chs  # the pool passes its input's channels through

    def forward(self, x: Tensor) -> Tensor:
        # N x 288 x 35 x 35 in
        b3x3 = self.branch3x3(x)  # N x 384 x 17 x 17
        b3x3dbl = self.branch3x3dbl_1(x)  # N x 64 x 35 x 35
        b3x3dbl = self.branch3x3dbl_2(b3x3dbl)  # N x 96 x 35 x 35
        b3x3dbl = self.branch3x3dbl_3(b3x3dbl)  # N x 96 x 17 x 17
        pool = F.max_pool2d(x, kernel_size=3, stride=2)  # N x 288 x 17 x 17
        return torch.cat([b3x3, b3x3dbl, pool], 1)  # N x 768 x 17 x 17


class InceptionAsymmetric(nn.Module):
    """torchvision's ``InceptionC`` (Mixed_6b-e, the 17 x 17 blocks; paper Fig. 6).

    A 7x7 factorised into 1x7 then 7x1 (Inception v3's asymmetric factorisation, 7x7 -> 14
    weights per channel pair instead of 49): 1x1 | 1x1 -> 1x7 -> 7x1 |
    1x1 -> (7x1 -> 1x7) x 2 | 3x3 avg-pool -> 1x1. ``channels_7x7`` is the inner width.
    """

    def __init__(self, in_chs: int, channels_7x7: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c7, c192 = (scale_width(c, width_multiplier) for c in (channels_7x7, 192))
        self.branch1x1 = _conv(in_chs, c192, 1)
        self.branch7x7_1 = _conv(in_chs, c7, 1)
        self.branch7x7_2 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _conv(c7, c192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _conv(in_chs, c7, 1)
        self.branch7x7dbl_2 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _conv(c7, c192, (1, 7), padding=(0, 3))
        self.branch_pool = _conv(in_chs, c192, 1)
        self.out_chs = 4 * c192

    def forward(self, x: Tensor) -> Tensor:
        # N x 768 x 17 x 17 in; c7 = channels_7x7
        b1x1 = self.branch1x1(x)  # N x 192 x 17 x 17
        b7x7 = self.branch7x7_1(x)  # N x c7 x 17 x 17
        b7x7 = self.branch7x7_2(b7x7)  # N x c7 x 17 x 17
        b7x7 = self.branch7x7_3(b7x7)  # N x 192 x 17 x 17
        b7x7dbl = self.branch7x7dbl_1(x)  # N x c7 x 17 x 17
        b7x7dbl = self.branch7x7dbl_2(b7x7dbl)  # N x c7 x 17 x 17
        b7x7dbl = self.branch7x7dbl_3(b7x7dbl)  # N x c7 x 17 x 17
        b7x7dbl = self.branch7x7dbl_4(b7x7dbl)  # N x c7 x 17 x 17
        b7x7dbl = self.branch7x7dbl_5(b7x7dbl)  # N x 192 x 17 x 17
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # N x 768 x 17 x 17
        pool = self.branch_pool(pool)  # N x 192 x 17 x 17
        return torch.cat([b1x1, b7x7, b7x7dbl, pool], 1)  # N x 768 x 17 x 17


class GridReductionAsymmetric(nn.Module):
    """torchvision's ``InceptionD`` (Mixed_7a): halves the grid, 17 x 17 -> 8 x 8 (Fig. 10).

    Like :class:`GridReduction`, with a 1x7 -> 7x1 factorised branch before its stride-2 3x3.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c192, c320 = (scale_width(c, width_multiplier) for c in (192, 320))
        self.branch3x3_1 = _conv(in_chs, c192, 1)
        self.branch3x3_2 = _conv(c192, c320, 3, stride=2)
        self.branch7x7x3_1 = _conv(in_chs, c192, 1)
        self.branch7x7x3_2 = _conv(c192, c192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _conv(c192, c192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _conv(c192, c192, 3, stride=2)
        self.out_chs = c320 + c192 + in_chs  # the pool passes its input's channels through

    def forward(self, x: Tensor) -> Tensor:
        # N x 768 x 17 x 17 in
        b3x3 = self.branch3x3_1(x)  # N x 192 x 17 x 17
        b3x3 = self.branch3x3_2(b3x3)  # N x 320 x 8 x 8
        b7x7x3 = self.branch7x7x3_1(x)  # N x 192 x 17 x 17
        b7x7x3 = self.branch7x7x3_2(b7x7x3)  # N x 192 x 17 x 17
        b7x7x3 = self.branch7x7x3_3(b7x7x3)  # N x 192 x 17 x 17
        b7x7x3 = self.branch7x7x3_4(b7x7x3)  # N x 192 x 8 x 8
        pool = F.max_pool2d(x, kernel_size=3, stride=2)  # N x 768 x 8 x 8
        return torch.cat([b3x3, b7x7x3, pool], 1)  # N x 1280 x 8 x 8


class InceptionExpanded(nn.Module):
    """torchvision's ``InceptionE`` (Mixed_7b-c, the 8 x 8 blocks; paper Fig. 7).

    The expanded filter bank: on the coarsest grid the 1x3 and 3x1 of a factorised 3x3 run
    side by side and are concatenated instead of stacked, widening the output to promote
    high-dimensional representations (paper Sec. 2, principle 2).
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c320, c384, c448, c192 = (scale_width(c, width_multiplier) for c in (320, 384, 448, 192))
        self.branch1x1 = _conv(in_chs, c320, 1)
        self.branch3x3_1 = _conv(in_chs, c384, 1)
        self.branch3x3_2a = _conv(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _conv(c384, c384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _conv(in_chs, c448, 1)
        self.branch3x3dbl_2 = _conv(c448, c384, 3, padding=1)
        self.branch3x3dbl_3a = _conv(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _conv(c384, c384, (3, 1), padding=(1, 0))
        self.branch_pool = _conv(in_chs, c192, 1)
        self.out_chs = c320 + 4 * c384 + c192

    def forward(self, x: Tensor) -> Tensor:
        # N x 1280 x 8 x 8 in (Mixed_7b), N x 2048 x 8 x 8 (Mixed_7c)
        b1x1 = self.branch1x1(x)  # N x 320 x 8 x 8
        b3x3 = self.branch3x3_1(x)  # N x 384 x 8 x 8
        b3x3 = torch.cat([self.branch3x3_2a(b3x3), self.branch3x3_2b(b3x3)], 1)  # N x 768 x 8 x 8
        b3x3dbl = self.branch3x3dbl_1(x)  # N x 448 x 8 x 8
        b3x3dbl = self.branch3x3dbl_2(b3x3dbl)  # N x 384 x 8 x 8
        b3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(b3x3dbl), self.branch3x3dbl_3b(b3x3dbl)], 1
        )  # N x 768 x 8 x 8
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # N x in_chs x 8 x 8
        pool = self.branch_pool(pool)  # N x 192 x 8 x 8
        return torch.cat([b1x1, b3x3, b3x3dbl, pool], 1)  # N x 2048 x 8 x 8


class AuxHead(nn.Module):
    """Auxiliary classifier on Mixed_6e's 17 x 17 map (torchvision's ``InceptionAux``).

    5x5/3 average pool -> 1x1 conv -> 5x5 conv -> fc. The paper (Sec. 4) finds it acts as a
    regulariser rather than speeding up early training. The fixed pool needs a map of at
    least 17 x 17 (a 299 x 299 input); ``adaptive_pool`` pools to 5 x 5 from any size.
    """

    classifier_name = "fc"

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        adaptive_pool: bool = False,
        conv_chs: int = 128,
        hidden: int = 768,
    ) -> None:
        super().__init__()
        self.adaptive_pool = adaptive_pool
        self.conv0 = _conv(in_chs, conv_chs, 1)
        self.conv1 = _conv(conv_chs, hidden, 5)
        self.fc = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        hidden = self.conv1.conv.out_channels
        self.fc = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # N x 768 x 17 x 17 in
        if self.adaptive_pool:
            x = F.adaptive_avg_pool2d(x, (5, 5))  # N x 768 x 5 x 5
        else:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # N x 768 x 5 x 5
        x = self.conv1(self.conv0(x))  # N x 128 x 5 x 5 -> N x 768 x 1 x 1
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # N x 768
        return self.fc(x)  # N x num_classes


class InceptionV3(ClassifierModel):
    """Inception v3 with torchvision's module names (``Conv2d_1a_3x3``, ``Mixed_5b``, ...).

    Args:
        num_classes: classifier width; 0 leaves the classifiers out (pooled features).
        in_chans: input channels.
        aux_logits: build the auxiliary head on Mixed_6e; in training mode ``forward`` then
            returns :class:`InceptionOutputs` (weight the aux loss, 0.3 or 0.4, in the loss).
        transform_input: re-normalise ImageNet-normalised input to the ``(x - 0.5) / 0.5``
            the ported checkpoints expect; 3 channels only.
        dropout: dropout before the final classifier.
        stem: ``"imagenet"`` (valid 3x3 convs, the first stride 2, and two max-pools) or
            ``"cifar"`` for small images (also makes the aux head's pooling adaptive).
        width_multiplier: scales the channels of every convolution, branch and the aux head
            (:func:`~moderncnn.models.layers.scale_width`: to a multiple of 8); 1.0 is the paper's.
            ``inception_v3_cifar(num_classes=10, in_chans=1, width_multiplier=0.2)``, for
            28 x 28 images, has 1.02M parameters with its aux head (0.93M without).
    """

    aux_head_names = ("AuxLogits",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.5,
        stem: str = "imagenet",
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        w = check_inception_args(stem, width_multiplier, transform_input, in_chans)
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        small = stem == "cifar"
        wm = width_multiplier

        # The ImageNet stem downsamples 8x before the first Inception block (299 -> 35), which
        # would leave a 3x3 map from a 32x32 image; small images get padded 3x3/1 convs and no
        # pools, so Mixed_5b sees 32 x 32 and the grid reductions leave 15 x 15 and 7 x 7.
        pad, stride = (1, 1) if small else (0, 2)
        self.Conv2d_1a_3x3 = _conv(in_chans, w(32), 3, stride=stride, padding=pad)
        self.Conv2d_2a_3x3 = _conv(w(32), w(32), 3, padding=pad)
        self.Conv2d_2b_3x3 = _conv(w(32), w(64), 3, padding=1)
        self.maxpool1: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = _conv(w(64), w(80), 1)
        self.Conv2d_4a_3x3 = _conv(w(80), w(192), 3, padding=pad)
        self.maxpool2: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionFactorized(w(192), pool_features=32, width_multiplier=wm)
        self.Mixed_5c = InceptionFactorized(self.Mixed_5b.out_chs, 64, wm)
        self.Mixed_5d = InceptionFactorized(self.Mixed_5c.out_chs, 64, wm)
        self.Mixed_6a = GridReduction(self.Mixed_5d.out_chs, wm)
        self.Mixed_6b = InceptionAsymmetric(
            self.Mixed_6a.out_chs, channels_7x7=128, width_multiplier=wm
        )
        self.Mixed_6c = InceptionAsymmetric(self.Mixed_6b.out_chs, 160, wm)
        self.Mixed_6d = InceptionAsymmetric(self.Mixed_6c.out_chs, 160, wm)
        self.Mixed_6e = InceptionAsymmetric(self.Mixed_6d.out_chs, 192, wm)
        chs_6e = self.Mixed_6e.out_chs
        self.AuxLogits = (
            AuxHead(chs_6e, num_classes, adaptive_pool=small, conv_chs=w(128), hidden=w(768))
            if aux_logits
            else None
        )
        self.Mixed_7a = GridReductionAsymmetric(chs_6e, wm)
        self.Mixed_7b = InceptionExpanded(self.Mixed_7a.out_chs, wm)
        self.Mixed_7c = InceptionExpanded(self.Mixed_7b.out_chs, wm)
        self.num_features = self.Mixed_7c.out_chs
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        strides = (1, 1, 1, 2, 4) if small else (2, 4, 8, 16, 32)
        stages = [("Conv2d_2b_3x3", w(64)), ("Conv2d_4a_3x3", w(192))]
        stages += [("Mixed_5d", self.Mixed_5d.out_chs), ("Mixed_6e", chs_6e)]
        stages += [("Mixed_7c", self.num_features)]
        self.feature_info = [
            FeatureInfo(name, chs, r) for (name, chs), r in zip(stages, strides, strict=True)
        ]
        self.input_size = (in_chans, 32, 32) if small else (in_chans, 299, 299)
        # Measured: 75 x 75 is the smallest input the ImageNet stem and grid reductions take;
        # the aux head's fixed 5x5/3 pool and 5x5 conv need Mixed_6e at 17 x 17, i.e. 299 x 299.
        min_hw = 7 if small else (299 if aux_logits else 75)
        self.min_input_size = (in_chans, min_hw, min_hw)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation (std 0.1; 0.01 and 0.001 in the aux head's last layers).
        std: dict[nn.Module, float] = {}
        if self.AuxLogits is not None:
            std = {self.AuxLogits.conv1.conv: 0.01, self.AuxLogits.fc: 0.001}
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std.get(m, 0.1), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Mixed_7c's map (N x 2048 x 8 x 8 for a 299 x 299 image)."""
        return self._features(x, with_aux=False)[0]

    def forward(self, x: Tensor) -> Tensor | InceptionOutputs:
        """Logits; in training mode with the aux head, :class:`InceptionOutputs`."""
        with_aux = self.training and self.aux_logits
        x, aux = self._features(x, with_aux)
        logits = self.forward_head(x)
        if with_aux:
            return InceptionOutputs(logits, aux)
        return logits

    def _features(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
        """Final feature map, plus the aux head's logits when ``with_aux``."""
        if self.transform_input:
            x = renormalize_imagenet(x)
        # N x 3 x 299 x 299
        x = self.Conv2d_1a_3x3(x)  # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)  # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)  # N x 64 x 147 x 147
        x = self.maxpool1(x)  # N x 64 x 73 x 73
        x = self.Conv2d_3b_1x1(x)  # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)  # N x 192 x 71 x 71
        x = self.maxpool2(x)  # N x 192 x 35 x 35
        x = self.Mixed_5b(x)  # N x 256 x 35 x 35
        x = self.Mixed_5c(x)  # N x 288 x 35 x 35
        x = self.Mixed_5d(x)  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)  # N x 768 x 17 x 17
        x = self.Mixed_6b(x)  # N x 768 x 17 x 17
        x = self.Mixed_6c(x)  # N x 768 x 17 x 17
        x = self.Mixed_6d(x)  # N x 768 x 17 x 17
        x = self.Mixed_6e(x)  # N x 768 x 17 x 17
        aux = self.AuxLogits(x) if with_aux else None  # N x num_classes
        x = self.Mixed_7a(x)  # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)  # N x 2048 x 8 x 8
        x = self.Mixed_7c(x)  # N x 2048 x 8 x 8
        return x, aux


# What the variant fixes (the stem) gives way to the caller's ``kwargs``.
_create = variant_builder(InceptionV3)


VARIANTS = register_variants(
    VariantConfig(
        "inception_v3",
        "inception_v3",
        input_size=(3, 299, 299),
        weights={
            # Ported from TensorFlow: the weights take (x - 0.5) / 0.5 (transform_input).
            "IMAGENET1K_V1": PretrainedWeights(
                "inception_v3_google-0cc3c7bd.pth",
                crop_size=299,
                resize_size=342,
                transform_input=True,
                mean=INCEPTION_MEAN,
                std=INCEPTION_STD,
            )
        },
        aux_heads=InceptionV3.aux_head_names,
        description="Inception v3, torchvision-compatible",
    )
)


@register_model
def inception_v3(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> InceptionV3:
    """Inception v3, torchvision-compatible, for 299 x 299 images."""
    return _create("inception_v3", num_classes, in_chans, kwargs)


# inception_v3_cifar: padded 3x3 stride-1 stem convs and no stem pooling, for 32 x 32 images.
globals().update(register_small_image_twins(VARIANTS, _create))
