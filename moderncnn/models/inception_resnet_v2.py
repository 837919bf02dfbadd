"""Inception-ResNet-v2, from "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning" (Szegedy, Ioffe, Vanhoucke & Alemi, AAAI 2017).

Inception blocks as the residual branch of a ResNet unit: each block's branches are
concatenated, projected back to the trunk width by a 1x1 convolution (with bias, no BN) and
added to the block's input, scaled down first (paper Sec. 3.3: 0.1-0.3; without it the deepest
blocks "died" early in training). 10 x Inception-ResNet-A on 35 x 35 (scale 0.17, paper
Fig. 16), Reduction-A, 20 x Inception-ResNet-B on 17 x 17 (0.10, Fig. 17), Reduction-B
(Fig. 18), 9 + 1 x Inception-ResNet-C on 8 x 8 (0.20, Fig. 19; the last unscaled, without ReLU).
State-dict keys are timm's ``inception_resnet_v2`` (the TensorFlow-slim layout: its stem is
Inception v3's with a 35 x 35 Inception block, ``mixed_5b``, not the paper's Fig. 3), so its
ImageNet weights load. Shape comments are for a 299 x 299 input.
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
from .googlenet import check_inception_args, renormalize_imagenet
from .inception_v4 import ReductionA, avg_pool_3x3, conv
from .layers import init_conv_bn, scale_width

__all__ = [
    "InceptionResNetA",
    "InceptionResNetB",
    "InceptionResNetC",
    "InceptionResNetV2",
    "InceptionStem",
    "ReductionB",
]


class InceptionStem(nn.Module):
    """The 35 x 35 Inception block that ends the stem (timm's ``Mixed_5b``).

    1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1 (Inception v3's ``Mixed_5b``).
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c48, c64, c96 = (scale_width(c, width_multiplier) for c in (48, 64, 96))
        self.branch0 = conv(in_chs, c96, 1)
        self.branch1 = nn.Sequential(conv(in_chs, c48, 1), conv(c48, c64, 5, padding=2))
        self.branch2 = nn.Sequential(
            conv(in_chs, c64, 1),
            conv(c64, c96, 3, padding=1),
            conv(c96, c96, 3, padding=1),
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(in_chs, c64, 1))
        self.out_chs = 2 * c96 + 2 * c64

    def forward(self, x: Tensor) -> Tensor:
        # N x 192 x 35 x 35 in
        x0 = self.branch0(x)  # N x 96 x 35 x 35
        x1 = self.branch1(x)  # N x 48 -> 64 x 35 x 35
        x2 = self.branch2(x)  # N x 64 -> 96 -> 96 x 35 x 35
        x3 = self.branch3(x)  # N x 192 (pool) -> 64 x 35 x 35
        return torch.cat([x0, x1, x2, x3], 1)  # N x 320 x 35 x 35


class InceptionResNetA(nn.Module):
    """Inception-ResNet-A, the 35 x 35 residual block (paper Fig. 16; timm's ``Block35``).

    ``relu(x + scale * conv1x1(cat(1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3)))``; the 1x1
    projection back to the trunk's ``in_chs`` has a bias and no BN.
    """

    def __init__(self, in_chs: int, scale: float = 0.17, width_multiplier: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        c32, c48, c64 = (scale_width(c, width_multiplier) for c in (32, 48, 64))
        self.branch0 = conv(in_chs, c32, 1)
        self.branch1 = nn.Sequential(conv(in_chs, c32, 1), conv(c32, c32, 3, padding=1))
        self.branch2 = nn.Sequential(
            conv(in_chs, c32, 1),
            conv(c32, c48, 3, padding=1),
            conv(c48, c64, 3, padding=1),
        )
        self.conv2d = nn.Conv2d(2 * c32 + c64, in_chs, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # N x 320 x 35 x 35 in
        x0 = self.branch0(x)  # N x 32 x 35 x 35
        x1 = self.branch1(x)  # N x 32 -> 32 x 35 x 35
        x2 = self.branch2(x)  # N x 32 -> 48 -> 64 x 35 x 35
        out = self.conv2d(torch.cat([x0, x1, x2], 1))  # N x 128 -> 320 x 35 x 35
        return self.act(out * self.scale + x)  # N x 320 x 35 x 35


class InceptionResNetB(nn.Module):
    """Inception-ResNet-B, the 17 x 17 residual block (paper Fig. 17; timm's ``Block17``).

    ``relu(x + scale * conv1x1(cat(1x1 | 1x1 -> 1x7 -> 7x1)))``.
    """

    def __init__(self, in_chs: int, scale: float = 0.10, width_multiplier: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        c128, c160, c192 = (scale_width(c, width_multiplier) for c in (128, 160, 192))
        self.branch0 = conv(in_chs, c192, 1)
        self.branch1 = nn.Sequential(
            conv(in_chs, c128, 1),
            conv(c128, c160, (1, 7), padding=(0, 3)),
            conv(c160, c192, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(2 * c192, in_chs, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # N x 1088 x 17 x 17 in
        x0 = self.branch0(x)  # N x 192 x 17 x 17
        x1 = self.branch1(x)  # N x 128 -> 160 -> 192 x 17 x 17
        out = self.conv2d(torch.cat([x0, x1], 1))  # N x 384 -> 1088 x 17 x 17
        return self.act(out * self.scale + x)  # N x 1088 x 17 x 17


class InceptionResNetC(nn.Module):
    """Inception-ResNet-C, the 8 x 8 residual block (paper Fig. 19; timm's ``Block8``).

    ``relu(x + scale * conv1x1(cat(1x1 | 1x1 -> 1x3 -> 3x1)))``; ``no_relu`` leaves the ReLU
    out (the last block, whose sum goes straight into the final 1x1 conv).
    """

    def __init__(
        self,
        in_chs: int,
        scale: float = 0.20,
        no_relu: bool = False,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.scale = scale
        c192, c224, c256 = (scale_width(c, width_multiplier) for c in (192, 224, 256))
        self.branch0 = conv(in_chs, c192, 1)
        self.branch1 = nn.Sequential(
            conv(in_chs, c192, 1),
            conv(c192, c224, (1, 3), padding=(0, 1)),
            conv(c224, c256, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(c192 + c256, in_chs, 1)
        self.act: nn.Module = nn.Identity() if no_relu else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # N x 2080 x 8 x 8 in
        x0 = self.branch0(x)  # N x 192 x 8 x 8
        x1 = self.branch1(x)  # N x 192 -> 224 -> 256 x 8 x 8
        out = self.conv2d(torch.cat([x0, x1], 1))  # N x 448 -> 2080 x 8 x 8
        return self.act(out * self.scale + x)  # N x 2080 x 8 x 8


class ReductionB(nn.Module):
    """Reduction-B of Inception-ResNet-v2, 17 x 17 -> 8 x 8 (paper Fig. 18; timm's ``Mixed_7a``).

    1x1 -> 3x3/2 | 1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max-pool.
    """

    def __init__(self, in_chs: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        c256, c288, c320, c384 = (scale_width(c, width_multiplier) for c in (256, 288, 320, 384))
        self.branch0 = nn.Sequential(conv(in_chs, c256, 1), conv(c256, c384, 3, stride=2))
        self.branch1 = nn.Sequential(conv(in_chs, c256, 1), conv(c256, c288, 3, stride=2))
        self.branch2 = nn.Sequential(
            conv(in_chs, c256, 1),
            conv(c256, c288, 3, padding=1),
            conv(c288, c320, 3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)
        self.out_chs = c384 + c288 + c320 + in_chs  # the pool passes its input's channels through

    def forward(self, x: Tensor) -> Tensor:
        # N x 1088 x 17 x 17 in
        x0 = self.branch0(x)  # N x 256 -> 384 x 8 x 8
        x1 = self.branch1(x)  # N x 256 -> 288 x 8 x 8
        x2 = self.branch2(x)  # N x 256 -> 288 -> 320 x 8 x 8
        x3 = self.branch3(x)  # N x 1088 x 8 x 8
        return torch.cat([x0, x1, x2, x3], 1)  # N x 2080 x 8 x 8


class InceptionResNetV2(ClassifierModel):
    """Inception-ResNet-v2 with timm's module names (``conv2d_1a`` ... ``repeat``,
    ``repeat_1``, ``repeat_2``, ``block8``, ``conv2d_7b``, ``classif``).

    Args:
        num_classes: classifier width; 0 leaves the classifier out (pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier (timm's default 0; the paper's 0.2).
        transform_input: re-normalise ImageNet-normalised input to the ``(x - 0.5) / 0.5``
            the TensorFlow-trained weights expect; 3 channels only. Turned on when those
            weights are loaded by name.
        stem: ``"imagenet"`` (unpadded convs, a stride-2 conv and two max-pools: 299 -> 35)
            or ``"cifar"`` for small images (padded, stride 1, no pools).
        width_multiplier: scales the channels of every convolution of every branch and the
            trunk (:func:`~moderncnn.models.layers.scale_width`: to a multiple of 8); 1.0 is
            the paper's. ``inception_resnet_v2_cifar(num_classes=10, in_chans=1,
            width_multiplier=0.125)``, for 28 x 28 images, has 0.95M parameters.
        scales: the residual scales of the A, B and C blocks (paper Sec. 3.3).
    """

    classifier_name = "classif"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        transform_input: bool = False,
        stem: str = "imagenet",
        width_multiplier: float = 1.0,
        scales: tuple[float, float, float] = (0.17, 0.10, 0.20),
    ) -> None:
        super().__init__()
        w = check_inception_args(stem, width_multiplier, transform_input, in_chans)
        self.num_classes = num_classes
        self.transform_input = transform_input
        small = stem == "cifar"
        wm = width_multiplier
        scale_a, scale_b, scale_c = scales

        # The stem, 299 -> 35: unpadded 3x3s, the first at stride 2, and two 3x3/2 max-pools.
        # The small-image stem pads the 3x3s, keeps stride 1 and drops the pools.
        pad, stride = (1, 1) if small else (0, 2)
        self.conv2d_1a = conv(in_chans, w(32), 3, stride=stride, padding=pad)
        self.conv2d_2a = conv(w(32), w(32), 3, padding=pad)
        self.conv2d_2b = conv(w(32), w(64), 3, padding=1)
        self.maxpool_3a: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv(w(64), w(80), 1)
        self.conv2d_4a = conv(w(80), w(192), 3, padding=pad)
        self.maxpool_5a: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, stride=2)
        self.mixed_5b = InceptionStem(w(192), wm)
        chs_a = self.mixed_5b.out_chs
        self.repeat = nn.Sequential(*(InceptionResNetA(chs_a, scale_a, wm) for _ in range(10)))
        # Reduction-A with the filter counts of paper Table 1: k, l, m, n = 256, 256, 384, 384.
        self.mixed_6a = ReductionA(chs_a, w(256), w(256), w(384), w(384))
        chs_b = self.mixed_6a.out_chs
        self.repeat_1 = nn.Sequential(*(InceptionResNetB(chs_b, scale_b, wm) for _ in range(20)))
        self.mixed_7a = ReductionB(chs_b, wm)
        chs_c = self.mixed_7a.out_chs
        self.repeat_2 = nn.Sequential(
            *(InceptionResNetC(chs_c, scale_c, width_multiplier=wm) for _ in range(9))
        )
        self.block8 = InceptionResNetC(chs_c, scale=1.0, no_relu=True, width_multiplier=wm)
        self.num_features = w(1536)
        self.conv2d_7b = conv(chs_c, self.num_features, 1)

        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.classif = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        strides = (1, 1, 1, 2, 4) if small else (2, 4, 8, 16, 32)
        stages = [("conv2d_2b", w(64)), ("conv2d_4a", w(192)), ("repeat", chs_a)]
        stages += [("repeat_1", chs_b), ("conv2d_7b", self.num_features)]
        self.feature_info = [
            FeatureInfo(name, chs, r) for (name, chs), r in zip(stages, strides, strict=True)
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
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``conv2d_7b``'s map (N x 1536 x 8 x 8 for a 299 x 299 image)."""
        if self.transform_input:
            x = renormalize_imagenet(x)
        # N x 3 x 299 x 299
        x = self.conv2d_1a(x)  # N x 32 x 149 x 149
        x = self.conv2d_2a(x)  # N x 32 x 147 x 147
        x = self.conv2d_2b(x)  # N x 64 x 147 x 147
        x = self.maxpool_3a(x)  # N x 64 x 73 x 73
        x = self.conv2d_3b(x)  # N x 80 x 73 x 73
        x = self.conv2d_4a(x)  # N x 192 x 71 x 71
        x = self.maxpool_5a(x)  # N x 192 x 35 x 35
        x = self.mixed_5b(x)  # N x 320 x 35 x 35
        x = self.repeat(x)  # N x 320 x 35 x 35
        x = self.mixed_6a(x)  # N x 1088 x 17 x 17
        x = self.repeat_1(x)  # N x 1088 x 17 x 17
        x = self.mixed_7a(x)  # N x 2080 x 8 x 8
        x = self.repeat_2(x)  # N x 2080 x 8 x 8
        x = self.block8(x)  # N x 2080 x 8 x 8
        return self.conv2d_7b(x)  # N x 1536 x 8 x 8


# What the variant fixes (the stem) gives way to the caller's ``kwargs``.
_create = variant_builder(InceptionResNetV2)


def _timm_weights(file_name: str, hub_id: str) -> PretrainedWeights:
    """timm's ports of the TensorFlow-slim weights: 1001 classes with the "background" first
    (timm >= 0.9 serves them 1000-class from the hub); crop 0.8975 (resize 333), bicubic,
    (x - 0.5) / 0.5."""
    return PretrainedWeights(
        file_name, crop_size=299, resize_size=333, transform_input=True,
        url_root=TIMM_URL_ROOT + "v0.1-weights/", source="timm", mean=INCEPTION_MEAN,
        std=INCEPTION_STD, interpolation="bicubic", label_offset=1, hub_id=hub_id,
    )  # fmt: skip


VARIANTS = register_variants(
    VariantConfig(
        "inception_resnet_v2",
        "inception_resnet_v2",
        input_size=(3, 299, 299),
        weights={
            "TF_IN1K": _timm_weights(
                "inception_resnet_v2-940b1cd6.pth", "timm/inception_resnet_v2.tf_in1k"
            ),
            # Ensemble adversarial training (Tramèr et al. 2018).
            "TF_ENS_ADV_IN1K": _timm_weights(
                "ens_adv_inception_resnet_v2-2592a550.pth",
                "timm/inception_resnet_v2.tf_ens_adv_in1k",
            ),
        },
        classifier=InceptionResNetV2.classifier_name,
        description="Inception-ResNet-v2 (Szegedy et al. 2017), timm-compatible",
    )
)


@register_model
def inception_resnet_v2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2 (Szegedy et al. 2017), timm-compatible, for 299 x 299 images."""
    return _create("inception_resnet_v2", num_classes, in_chans, kwargs)


# inception_resnet_v2_cifar: the stem padded, at stride 1 and without pools, for 32 x 32 images.
globals().update(register_small_image_twins(VARIANTS, _create))
