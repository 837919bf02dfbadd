"""Inception-v4, from "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning" (Szegedy, Ioffe, Vanhoucke & Alemi, AAAI 2017).

Inception v3 made uniform: one stem (paper Fig. 3), then 4 x Inception-A on the 35 x 35 grid
(Fig. 4), Reduction-A (Fig. 7), 7 x Inception-B on 17 x 17 (Fig. 5), Reduction-B (Fig. 8) and
3 x Inception-C on 8 x 8 (Fig. 6). Every convolution is conv-BN-ReLU with BN's eps 1e-3 (the
TensorFlow weights'). State-dict keys are timm's ``inception_v4`` (``features.0`` ...
``features.21``, ``last_linear``), so its ImageNet weights load; the block docstrings give
timm's class names.
Shape comments are for a 299 x 299 input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import ClassifierModel, FeatureInfo
from ._config import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    TIMM_URL_ROOT,
    PretrainedWeights,
    VariantConfig,
)
from ._registry import (
    register_model,
    register_small_image_twins,
    register_variants,
    variant_builder,
)
from .googlenet import BN_EPS, check_inception_args, renormalize_imagenet
from .layers import ConvBNAct, init_conv_bn, scale_width

__all__ = [
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionV4",
    "ReductionA",
    "ReductionB",
    "StemConvPool",
    "StemPoolConv",
    "StemTwoTowers",
]


def conv(in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], **kwargs) -> ConvBNAct:
    """Conv-BN(eps 1e-3)-ReLU, unpadded unless ``padding`` is given (TensorFlow's "VALID")."""
    return ConvBNAct(in_chs, out_chs, kernel_size, bn_eps=BN_EPS, **kwargs)


def avg_pool_3x3() -> nn.AvgPool2d:
    """3x3/1 average pool that keeps the map size and averages over real pixels only at the
    border (TensorFlow's "SAME" average pooling, ``count_include_pad=False``)."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class StemPoolConv(nn.Module):
    """Stem, first split (timm's ``Mixed3a``): 3x3/2 max-pool | 3x3/2 conv, concatenated.

    ``small``: both at stride 1, padded (the small-image stem keeps the map size).
    """

    def __init__(self, in_chs: int, out_chs: int = 96, small: bool = False) -> None:
        super().__init__()
        stride, pad = (1, 1) if small else (2, 0)
        self.maxpool = nn.MaxPool2d(3, stride=stride, padding=pad)
        self.conv = conv(in_chs, out_chs, 3, stride=stride, padding=pad)
        self.out_chs = in_chs + out_chs

    def forward(self, x: Tensor) -> Tensor:
        # N x 64 x 147 x 147 in
        pool = self.maxpool(x)  # N x 64 x 73 x 73
        x = self.conv(x)  # N x 96 x 73 x 73
        return torch.cat([pool, x], 1)  # N x 160 x 73 x 73


class StemTwoTowers(nn.Module):
    """Stem, second split (timm's ``Mixed4a``): 1x1 -> 3x3 | 1x1 -> 7x1 -> 1x7 -> 3x3.

    The 3x3s are unpadded (73 -> 71); ``small`` pads them.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0, small: bool = False) -> None:
        super().__init__()
        c64, c96 = (scale_width(c, width_multiplier) for c in (64, 96))
        pad = 1 if small else 0
        self.branch0 = nn.Sequential(
            conv(in_chs, c64, 1),
            conv(c64, c96, 3, padding=pad),
        )
        self.branch1 = nn.Sequential(
            conv(in_chs, c64, 1),
            conv(c64, c64, (1, 7), padding=(0, 3)),
            conv(c64, c64, (7, 1), padding=(3, 0)),
            conv(c64, c96, 3, padding=pad),
        )
        self.out_chs = 2 * c96

    def forward(self, x: Tensor) -> Tensor:
        # N x 160 x 73 x 73 in
        x0 = self.branch0(x)  # N x 64 -> 96 x 71 x 71
        x1 = self.branch1(x)  # N x 64 -> 64 -> 64 -> 96 x 71 x 71
        return torch.cat([x0, x1], 1)  # N x 192 x 71 x 71


class StemConvPool(nn.Module):
    """Stem, last split (timm's ``Mixed5a``): 3x3/2 conv | 3x3/2 max-pool, concatenated."""

    def __init__(self, in_chs: int, out_chs: int = 192, small: bool = False) -> None:
        super().__init__()
        stride, pad = (1, 1) if small else (2, 0)
        self.conv = conv(in_chs, out_chs, 3, stride=stride, padding=pad)
        self.maxpool = nn.MaxPool2d(3, stride=stride, padding=pad)
        self.out_chs = out_chs + in_chs

    def forward(self, x: Tensor) -> Tensor:
        # N x 192 x 71 x 71 in
        x0 = self.conv(x)  # N x 192 x 35 x 35
        pool = self.maxpool(x)  # N x 192 x 35 x 35
        return torch.cat([x0, pool], 1)  # N x 384 x 35 x 35


class InceptionA(nn.Module):
    """Inception-A, the 35 x 35 block (paper Fig. 4; timm's ``InceptionA``).

    1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1: Inception v3's factorised block
    with four equal 96-channel outputs.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c64, c96 = (scale_width(c, width_multiplier) for c in (64, 96))
        self.branch0 = conv(in_chs, c96, 1)
        self.branch1 = nn.Sequential(conv(in_chs, c64, 1), conv(c64, c96, 3, padding=1))
        self.branch2 = nn.Sequential(
            conv(in_chs, c64, 1),
            conv(c64, c96, 3, padding=1),
            conv(c96, c96, 3, padding=1),
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(in_chs, c96, 1))
        self.out_chs = 4 * c96

    def forward(self, x: Tensor) -> Tensor:
        # N x 384 x 35 x 35 in
        x0 = self.branch0(x)  # N x 96 x 35 x 35
        x1 = self.branch1(x)  # N x 64 -> 96 x 35 x 35
        x2 = self.branch2(x)  # N x 64 -> 96 -> 96 x 35 x 35
        x3 = self.branch3(x)  # N x 384 (pool) -> 96 x 35 x 35
        return torch.cat([x0, x1, x2, x3], 1)  # N x 384 x 35 x 35


class ReductionA(nn.Module):
    """Reduction-A, 35 x 35 -> 17 x 17 (paper Fig. 7; timm's ``ReductionA``, and ``Mixed_6a``
    in Inception-ResNet-v2).

    3x3/2 conv to ``n`` | 1x1 to ``k`` -> 3x3 to ``l`` -> 3x3/2 to ``m`` | 3x3/2 max-pool; the
    filter counts of paper Table 1 (Inception-v4: k, l, m, n = 192, 224, 256, 384).
    """

    def __init__(self, in_chs: int, k: int, l: int, m: int, n: int) -> None:
        super().__init__()
        self.branch0 = conv(in_chs, n, 3, stride=2)
        self.branch1 = nn.Sequential(
            conv(in_chs, k, 1),
            conv(k, l, 3, padding=1),
            conv(l, m, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)
        self.out_chs = n + m + in_chs  # the pool passes its input's channels through

    def forward(self, x: Tensor) -> Tensor:
        # N x 384 x 35 x 35 in (Inception-v4)
        x0 = self.branch0(x)  # N x 384 x 17 x 17
        x1 = self.branch1(x)  # N x 192 -> 224 -> 256 x 17 x 17
        x2 = self.branch2(x)  # N x 384 x 17 x 17
        return torch.cat([x0, x1, x2], 1)  # N x 1024 x 17 x 17


class InceptionB(nn.Module):
    """Inception-B, the 17 x 17 block (paper Fig. 5; timm's ``InceptionB``).

    1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg-pool -> 1x1: the
    asymmetric factorisation of a 7x7 (Inception v3), once and twice.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c128, c192, c224, c256, c384 = (
            scale_width(c, width_multiplier) for c in (128, 192, 224, 256, 384)
        )
        self.branch0 = conv(in_chs, c384, 1)
        self.branch1 = nn.Sequential(
            conv(in_chs, c192, 1),
            conv(c192, c224, (1, 7), padding=(0, 3)),
            conv(c224, c256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            conv(in_chs, c192, 1),
            conv(c192, c192, (7, 1), padding=(3, 0)),
            conv(c192, c224, (1, 7), padding=(0, 3)),
            conv(c224, c224, (7, 1), padding=(3, 0)),
            conv(c224, c256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(in_chs, c128, 1))
        self.out_chs = c384 + 2 * c256 + c128

    def forward(self, x: Tensor) -> Tensor:
        # N x 1024 x 17 x 17 in
        x0 = self.branch0(x)  # N x 384 x 17 x 17
        x1 = self.branch1(x)  # N x 192 -> 224 -> 256 x 17 x 17
        x2 = self.branch2(x)  # N x 192 -> 192 -> 224 -> 224 -> 256 x 17 x 17
        x3 = self.branch3(x)  # N x 1024 (pool) -> 128 x 17 x 17
        return torch.cat([x0, x1, x2, x3], 1)  # N x 1024 x 17 x 17


class ReductionB(nn.Module):
    """Reduction-B, 17 x 17 -> 8 x 8 (paper Fig. 8; timm's ``ReductionB``).

    1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | 3x3/2 max-pool.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c192, c256, c320 = (scale_width(c, width_multiplier) for c in (192, 256, 320))
        self.branch0 = nn.Sequential(conv(in_chs, c192, 1), conv(c192, c192, 3, stride=2))
        self.branch1 = nn.Sequential(
            conv(in_chs, c256, 1),
            conv(c256, c256, (1, 7), padding=(0, 3)),
            conv(c256, c320, (7, 1), padding=(3, 0)),
            conv(c320, c320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)
        self.out_chs = c192 + c320 + in_chs  # the pool passes its input's channels through

    def forward(self, x: Tensor) -> Tensor:
        # N x 1024 x 17 x 17 in
        x0 = self.branch0(x)  # N x 192 -> 192 x 8 x 8
        x1 = self.branch1(x)  # N x 256 -> 256 -> 320 -> 320 x 8 x 8
        x2 = self.branch2(x)  # N x 1024 x 8 x 8
        return torch.cat([x0, x1, x2], 1)  # N x 1536 x 8 x 8


class InceptionC(nn.Module):
    """Inception-C, the 8 x 8 block (paper Fig. 6; timm's ``InceptionC``).

    1x1 | 1x1 -> (1x3 and 3x1 side by side) | 1x1 -> 3x1 -> 1x3 -> (1x3 and 3x1 side by side)
    | avg-pool -> 1x1: Inception v3's expanded filter bank on the coarsest grid.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c256, c384, c448, c512 = (scale_width(c, width_multiplier) for c in (256, 384, 448, 512))
        self.branch0 = conv(in_chs, c256, 1)
        self.branch1_0 = conv(in_chs, c384, 1)
        self.branch1_1a = conv(c384, c256, (1, 3), padding=(0, 1))
        self.branch1_1b = conv(c384, c256, (3, 1), padding=(1, 0))
        self.branch2_0 = conv(in_chs, c384, 1)
        self.branch2_1 = conv(c384, c448, (3, 1), padding=(1, 0))
        self.branch2_2 = conv(c448, c512, (1, 3), padding=(0, 1))
        self.branch2_3a = conv(c512, c256, (1, 3), padding=(0, 1))
        self.branch2_3b = conv(c512, c256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(in_chs, c256, 1))
        self.out_chs = 6 * c256

    def forward(self, x: Tensor) -> Tensor:
        # N x 1536 x 8 x 8 in
        x0 = self.branch0(x)  # N x 256 x 8 x 8
        x1 = self.branch1_0(x)  # N x 384 x 8 x 8
        x1 = torch.cat([self.branch1_1a(x1), self.branch1_1b(x1)], 1)  # N x 512 x 8 x 8
        x2 = self.branch2_0(x)  # N x 384 x 8 x 8
        x2 = self.branch2_2(self.branch2_1(x2))  # N x 448 -> 512 x 8 x 8
        x2 = torch.cat([self.branch2_3a(x2), self.branch2_3b(x2)], 1)  # N x 512 x 8 x 8
        x3 = self.branch3(x)  # N x 1536 (pool) -> 256 x 8 x 8
        return torch.cat([x0, x1, x2, x3], 1)  # N x 1536 x 8 x 8


class InceptionV4(ClassifierModel):
    """Inception-v4 with timm's module names.

    ``features`` holds, in order: the stem (0-5: three 3x3 convs, :class:`StemPoolConv`,
    :class:`StemTwoTowers`, :class:`StemConvPool`), 4 x :class:`InceptionA` (6-9),
    :class:`ReductionA` (10), 7 x :class:`InceptionB` (11-17), :class:`ReductionB` (18) and
    3 x :class:`InceptionC` (19-21).

    Args:
        num_classes: classifier width; 0 leaves the classifier out (pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier (timm's default 0; the paper's 0.2).
        transform_input: re-normalise ImageNet-normalised input to the ``(x - 0.5) / 0.5``
            the TensorFlow-trained weights expect; 3 channels only. Turned on when those
            weights are loaded by name.
        stem: ``"imagenet"`` (the paper's stem, 299 -> 35) or ``"cifar"`` for small images
            (every stem conv and pool at stride 1, padded: Inception-A sees the full image).
        width_multiplier: scales the channels of every convolution of every branch
            (:func:`~moderncnn.models.layers.scale_width`: to a multiple of 8); 1.0 is the paper's.
            ``inception_v4_cifar(num_classes=10, in_chans=1, width_multiplier=0.15)``, for
            28 x 28 images, has 0.96M parameters.
    """

    classifier_name = "last_linear"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        transform_input: bool = False,
        stem: str = "imagenet",
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        w = check_inception_args(stem, width_multiplier, transform_input, in_chans)
        self.num_classes = num_classes
        self.transform_input = transform_input
        small = stem == "cifar"
        wm = width_multiplier

        # The stem (paper Fig. 3): unpadded ("V") convs and stride-2 splits, 299 -> 35. The
        # small-image stem pads every conv and keeps stride 1, so Inception-A sees 32 x 32.
        pad, stride = (1, 1) if small else (0, 2)
        layers: list[nn.Module] = [
            conv(in_chans, w(32), 3, stride=stride, padding=pad),
            conv(w(32), w(32), 3, padding=pad),
            conv(w(32), w(64), 3, padding=1),
        ]
        layers.append(StemPoolConv(w(64), w(96), small))
        layers.append(StemTwoTowers(layers[-1].out_chs, wm, small))
        layers.append(StemConvPool(layers[-1].out_chs, w(192), small))
        for _ in range(4):
            layers.append(InceptionA(layers[-1].out_chs, wm))
        layers.append(ReductionA(layers[-1].out_chs, w(192), w(224), w(256), w(384)))
        for _ in range(7):
            layers.append(InceptionB(layers[-1].out_chs, wm))
        layers.append(ReductionB(layers[-1].out_chs, wm))
        for _ in range(3):
            layers.append(InceptionC(layers[-1].out_chs, wm))
        self.features = nn.Sequential(*layers)
        self.num_features = layers[-1].out_chs

        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.last_linear = (
            nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        )

        strides = (1, 1, 1, 2, 4) if small else (2, 4, 8, 16, 32)
        taps = [(2, w(64)), (3, layers[3].out_chs), (9, layers[9].out_chs)]
        taps += [(17, layers[17].out_chs), (21, self.num_features)]
        self.feature_info = [
            FeatureInfo(f"features.{i}", chs, r) for (i, chs), r in zip(taps, strides, strict=True)
        ]
        self.input_size = (in_chans, 32, 32) if small else (in_chans, 299, 299)
        # Measured: the unpadded stem and reductions need 75 x 75 (a 1 x 1 map after
        # Reduction-B); the small-image stem's two reductions need 7 x 7.
        min_hw = 7 if small else 75
        self.min_input_size = (in_chans, min_hw, min_hw)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs (fan-in), unit BN; Linear keeps PyTorch's default (as timm)."""
        init_conv_bn(self, mode="fan_in")

    def forward_features(self, x: Tensor) -> Tensor:
        """Inception-C's map (N x 1536 x 8 x 8 for a 299 x 299 image)."""
        if self.transform_input:
            x = renormalize_imagenet(x)
        # N x 3 x 299 x 299 -> stem: 149, 147, 147 -> 73 -> 71 -> N x 384 x 35 x 35
        # -> Inception-A x 4: N x 384 x 35 x 35 -> Reduction-A: N x 1024 x 17 x 17
        # -> Inception-B x 7: N x 1024 x 17 x 17 -> Reduction-B: N x 1536 x 8 x 8
        # -> Inception-C x 3: N x 1536 x 8 x 8
        return self.features(x)


# What the variant fixes (the stem) gives way to the caller's ``kwargs``.
_create = variant_builder(InceptionV4)


VARIANTS = register_variants(
    VariantConfig(
        "inception_v4",
        "inception_v4",
        input_size=(3, 299, 299),
        weights={
            # timm's port of the TensorFlow-slim weights (from Cadene's pretrained-models), 1001
            # classes with the "background" first; timm >= 0.9 serves them 1000-class from the
            # hub. Crop 0.875 (resize 341), bicubic, (x - 0.5) / 0.5.
            "TF_IN1K": PretrainedWeights(
                "inceptionv4-8e4777a0.pth",
                crop_size=299,
                resize_size=341,
                transform_input=True,
                url_root=TIMM_URL_ROOT + "v0.1-cadene/",
                source="timm",
                mean=INCEPTION_MEAN,
                std=INCEPTION_STD,
                interpolation="bicubic",
                label_offset=1,
                hub_id="timm/inception_v4.tf_in1k",
            )
        },
        classifier=InceptionV4.classifier_name,
        description="Inception-v4 (Szegedy et al. 2017), timm-compatible",
    )
)


@register_model
def inception_v4(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> InceptionV4:
    """Inception-v4 (Szegedy et al. 2017), timm-compatible, for 299 x 299 images."""
    return _create("inception_v4", num_classes, in_chans, kwargs)


# inception_v4_cifar: the stem at stride 1, padded, for 32 x 32 images.
globals().update(register_small_image_twins(VARIANTS, _create))
