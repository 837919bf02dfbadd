"""DenseNet (Huang et al., "Densely Connected Convolutional Networks", 2017).

Each layer sees the concatenation of every earlier feature map in its block and adds
``growth_rate`` new channels; transitions between blocks compress and halve the map.
Attribute names follow torchvision (``features.denseblock1.denselayer1.norm1``, ...,
``classifier``) so its checkpoints load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from moderncnn.io.errors import ConfigError

from ._base import ClassifierModel, FeatureInfo
from ._config import PretrainedWeights, VariantConfig
from ._registry import (
    get_variant_config,
    register_model,
    register_small_image_twins,
    register_variants,
)

Stem = Literal["imagenet", "cifar"]


@contextlib.contextmanager
def keep_running_stats(norm: nn.BatchNorm2d) -> Iterator[None]:
    """Undo the running-statistics update of the batch norm forward passes run inside."""
    saved = [buffer.clone() for buffer in norm.buffers()]
    try:
        yield  # checkpoint may end the re-run early by raising: restore in any case
    finally:
        with torch.no_grad():
            for buffer, value in zip(norm.buffers(), saved, strict=True):
                buffer.copy_(value)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (to ``bn_size * growth_rate``) then BN-ReLU-3x3 (to ``growth_rate``).

    The 1x1 "bottleneck" (DenseNet-B) keeps the 3x3 cheap however wide the input grows;
    ``bn_size=0`` leaves it out, as the paper's plain DenseNet (BN-ReLU-3x3 on the whole
    concatenation; ``densenet40``). ``memory_efficient`` recomputes the concatenation and
    bottleneck in the backward pass instead of storing them (Pleiss et al. 2017): quadratic
    memory becomes linear.
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
        if bn_size < 0 or (memory_efficient and bn_size == 0):
            raise ConfigError(
                f"bn_size must be >= 0 (0: no bottleneck) and memory_efficient needs a "
                f"bottleneck to recompute, got bn_size={bn_size}, "
                f"memory_efficient={memory_efficient}"
            )
        inner = bn_size * growth_rate if bn_size else in_chs
        if bn_size:
            self.norm1 = nn.BatchNorm2d(in_chs)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(in_chs, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)
        self.bn_size = bn_size
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *inputs: Tensor) -> Tensor:
        """Concatenate the earlier maps and BN-ReLU-1x1 them to ``bn_size * growth_rate``
        (with ``bn_size=0``, only concatenate them)."""
        x = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(x))) if self.bn_size else x

    def _checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, ...]:
        """Contexts of the forward pass and of the backward pass's re-run of the bottleneck.

        Without ``keep_running_stats`` the re-run would count each training batch twice in
        norm1's running statistics (as torchvision's ``memory_efficient`` does).
        """
        return contextlib.nullcontext(), keep_running_stats(self.norm1)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        # inputs: the block input and each earlier layer's map, N x C_i x H x W
        if self.memory_efficient and torch.is_grad_enabled():
            out = cp.checkpoint(
                self.bottleneck, *inputs, use_reentrant=False, context_fn=self._checkpoint_contexts
            )
        else:
            out = self.bottleneck(*inputs)  # N x bn_size * growth_rate x H x W
        out = self.conv2(self.relu2(self.norm2(out)))  # N x growth_rate x H x W
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
        bn_size: bottleneck width as a multiple of ``growth_rate``; 0: no bottleneck.
        compression: fraction of channels a transition keeps (0.5 in DenseNet-BC).
        drop_rate: dropout probability on each layer's new maps (0 in torchvision's models).
        num_classes: classifier width; 0 leaves the classifier out.
        in_chans: channels of the input images.
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
        stem: Stem = "imagenet",
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ConfigError(f"compression must be in (0, 1], got {compression}")
        if min(block_config, default=0) < 1:
            raise ConfigError(
                f"block_config needs >= 1 layer in each of >= 1 blocks, got {list(block_config)}"
            )
        self.num_classes = num_classes
        self.features = nn.Sequential()
        if stem == "imagenet":
            conv0 = nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False)
            reduction, self.input_size = 4, (in_chans, 224, 224)
        elif stem == "cifar":
            # Huang et al. 2017, section 3 (DenseNet-BC on CIFAR): one 3x3 conv to 2k channels on
            # the full 32x32 image, no pooling. The ImageNet stem would shrink it 4x to 8x8
            # before the first block, discarding most of its spatial detail.
            conv0 = nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False)
            reduction, self.input_size = 1, (in_chans, 32, 32)
        else:
            raise ConfigError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.features.add_module("conv0", conv0)
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
        # Each transition's unpadded 2x2 pool needs a map of at least 2 x 2; at the total stride
        # every pool gets an even map and the last map is 1 x 1.
        self.min_input_size = (in_chans, reduction, reduction)

        self.dropout = None
        self.classifier = nn.Linear(chs, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's: He-normal convs (fan-in), unit BN, zero classifier bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final BN-ReLU map (N x 1024 x 7 x 7 for DenseNet-121 on a 224 x 224 image)."""
        # N x in_chans x H x W -> stem: N x num_init_features x H/4 x W/4 (cifar stem: H x W)
        # -> each block adds num_layers * growth_rate channels; each transition halves
        # channels and map -> norm5, relu5: N x num_features x H/32 x W/32 (cifar: H/8)
        return self.features(x)


def _create(name: str, num_classes: int, in_chans: int, kwargs: Mapping[str, Any]) -> DenseNet:
    """What the variant fixes (growth rate, depth, stem) gives way to the caller's ``kwargs``.

    The stem width defaults to twice the growth rate, as in the paper's DenseNet-BC (and all
    four torchvision ImageNet models), also when ``growth_rate`` is overridden.
    """
    args = get_variant_config(name).build_args(kwargs)
    args.setdefault("num_init_features", 2 * args["growth_rate"])
    return DenseNet(num_classes=num_classes, in_chans=in_chans, **args)


def _variant(name: str, growth_rate: int, block_config: tuple[int, ...], file_name: str):
    return VariantConfig(
        name,
        "densenet",
        {"growth_rate": growth_rate, "block_config": block_config},
        weights={"IMAGENET1K_V1": PretrainedWeights(file_name)},
        classifier="classifier",
        description=f"DenseNet-{name.removeprefix('densenet')} (BC, growth rate {growth_rate})",
    )


# The variant table: growth rate and layers per block, torchvision's ImageNet weights.
VARIANTS = register_variants(
    _variant("densenet121", 32, (6, 12, 24, 16), "densenet121-a639ec97.pth"),
    _variant("densenet161", 48, (6, 12, 36, 24), "densenet161-8d451a50.pth"),
    _variant("densenet169", 32, (6, 12, 32, 32), "densenet169-b2777c0a.pth"),
    _variant("densenet201", 32, (6, 12, 48, 32), "densenet201-c1103571.pth"),
)


@register_model
def densenet121(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-121 (BC, growth rate 32), for 224 x 224 images."""
    return _create("densenet121", num_classes, in_chans, kwargs)


@register_model
def densenet161(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-161 (BC, growth rate 48), for 224 x 224 images."""
    return _create("densenet161", num_classes, in_chans, kwargs)


@register_model
def densenet169(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-169 (BC, growth rate 32), for 224 x 224 images."""
    return _create("densenet169", num_classes, in_chans, kwargs)


@register_model
def densenet201(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-201 (BC, growth rate 32), for 224 x 224 images."""
    return _create("densenet201", num_classes, in_chans, kwargs)


# Small-image variants (densenet121_cifar, ...): a 3x3 stride-1 stem and no pooling, as the
# paper's CIFAR DenseNet-BC (which has 3 blocks; these keep the ImageNet depths).
globals().update(register_small_image_twins(VARIANTS, _create))
