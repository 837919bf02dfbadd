"""GoogLeNet (Inception v1), from "Going Deeper with Convolutions" (Szegedy et al., 2015).

Nine Inception blocks -- four parallel branches concatenated on channels -- with two
auxiliary classifiers on intermediate maps that add gradient signal during training.
State-dict keys and shapes are torchvision's ``googlenet``, so its checkpoints load.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ClassifierModel, FeatureInfo
from ._registry import register_model
from .layers import ConvBNAct

__all__ = [
    "AuxHead",
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
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_RENORM_SCALE = tuple(s / 0.5 for s in _IMAGENET_STD)
_RENORM_SHIFT = tuple((m - 0.5) / 0.5 for m in _IMAGENET_MEAN)


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
        raise ValueError(
            f"transform_input=True re-normalises the 3 ImageNet RGB channels, got in_chans="
            f"{in_chans}; pass transform_input=False for {in_chans}-channel input"
        )


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
    to 4 x 4 (adaptive, so any map size works), 1x1 conv to 128 channels, then
    fc 1024 -> dropout -> fc to the classes.
    """

    def __init__(self, in_chs: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_chs, 128, 1, bn_eps=BN_EPS)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.fc2 = nn.Linear(1024, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # aux1: N x 512 x 4 x 4, aux2: N x 528 x 4 x 4
        x = torch.flatten(self.conv(x), 1)  # N x 2048
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # N x 1024
        return self.fc2(x)  # N x num_classes


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
    """

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
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if branch3_kernel_size not in (3, 5):
            raise ValueError(
                f"branch3_kernel_size must be 3 (torchvision) or 5 (paper), "
                f"got {branch3_kernel_size!r}"
            )
        check_transform_input(transform_input, in_chans)
        self.num_classes = num_classes
        self.num_features = 1024
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        small = stem == "cifar"

        if small:
            # The ImageNet stem downsamples 8x before the first Inception block, which leaves a
            # 4x4 map from a 32x32 image; small images keep full resolution (3x3/1, no pools).
            self.conv1 = ConvBNAct(in_chans, 64, 3, padding=1, bn_eps=BN_EPS)
            self.maxpool1: nn.Module = nn.Identity()
        else:
            self.conv1 = ConvBNAct(in_chans, 64, 7, stride=2, padding=3, bn_eps=BN_EPS)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvBNAct(64, 64, 1, bn_eps=BN_EPS)
        self.conv3 = ConvBNAct(64, 192, 3, padding=1, bn_eps=BN_EPS)
        self.maxpool2: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, 2, ceil_mode=True)

        # Channels per block, paper Table 1: in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
        def block(*chs: int) -> InceptionBlock:
            return InceptionBlock(*chs, branch3_kernel_size=branch3_kernel_size)

        self.inception3a = block(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = block(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = block(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = block(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = block(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = block(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = block(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = block(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = block(832, 384, 192, 384, 48, 128, 128)

        self.aux1 = AuxHead(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = AuxHead(528, num_classes, dropout_aux) if aux_logits else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        # Strides of the stage maps; the small-image stem keeps stride 1 up to inception3b.
        strides = (1, 1, 1, 2, 4) if small else (2, 4, 8, 16, 32)
        stages = [("conv1", 64), ("conv3", 192), ("inception3b", 480), ("inception4e", 832)]
        stages.append(("inception5b", self.num_features))
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

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final and the auxiliary classifiers (0 removes them)."""
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.reset_classifier(num_classes)

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


@register_model
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1), torchvision-compatible, for 224 x 224 images."""
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def googlenet_cifar(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet with a 3x3 stride-1 stem and no stem pooling, for 32 x 32 images."""
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, stem="cifar", **kwargs)
