"""The CIFAR DenseNets of Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017,
section 3 and Table 2): DenseNet-40 (k=12) and DenseNet-BC-100 (k=12).

Not the ImageNet DenseNets with a small stem (``densenet121_cifar``: 4 blocks, 7M
parameters): a 3x3 conv on the whole 32 x 32 image, three dense blocks of equal depth on 32,
16 and 8 pixel maps, global average pooling and the classifier. The same
:class:`~moderncnn.models.densenet.DenseNet` builds them:

- ``densenet40``: the plain DenseNet, 12 layers per block, each a BN-ReLU-3x3 on everything
  before it (no 1x1 bottleneck), transitions that keep every channel, a 16-channel stem.
- ``densenet_bc_100``: DenseNet-BC, 16 layers per block, each a 1x1 bottleneck to 4k channels
  then a 3x3 (B), transitions that halve the channels (C), a 2k-channel stem.

Parameter counts (tested; the paper's Table 2 rounds them)::

    model             10 classes   paper   C10+ error (paper)
    densenet40         1,019,754   1.0M    5.24%
    densenet_bc_100      769,210   0.8M    4.51%
"""

from __future__ import annotations

from ._config import SMALL_IMAGE_SIZE, VariantConfig
from ._registry import register_model, register_variants, variant_builder
from .densenet import DenseNet

__all__: list[str] = []


# What the variant fixes (depth, growth rate, bottleneck, compression) gives way to the
# caller's ``kwargs``.
_create = variant_builder(DenseNet)


def _variant(name: str, description: str, **args) -> VariantConfig:
    """A network designed for 32 x 32 images: the small stem is its own, not a twin's."""
    return VariantConfig(
        name, "densenet", args, stem="cifar", input_size=(3, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE),
        classifier="classifier", description=description,
    )  # fmt: skip


# Depth L = 3 blocks x layers + 4 (stem, two transitions, classifier), a bottleneck layer
# counting twice: DenseNet-40 has (40 - 4) / 3 = 12 layers per block, -BC-100 (100 - 4) / 6 = 16.
VARIANTS = register_variants(
    _variant("densenet40", "DenseNet-40 (Huang et al. 2017, CIFAR): growth rate 12, 3 blocks "
             "of 12 BN-ReLU-3x3 layers, no bottleneck or compression",
             growth_rate=12, block_config=(12, 12, 12), num_init_features=16, bn_size=0,
             compression=1.0),
    _variant("densenet_bc_100", "DenseNet-BC-100 (Huang et al. 2017, CIFAR): growth rate 12, "
             "3 blocks of 16 bottleneck layers, compression 0.5",
             growth_rate=12, block_config=(16, 16, 16), num_init_features=24, bn_size=4,
             compression=0.5),
)  # fmt: skip


@register_model
def densenet40(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-40 (CIFAR, k=12, no bottleneck or compression): 1.0M parameters, 32 x 32."""
    return _create("densenet40", num_classes, in_chans, kwargs)


@register_model
def densenet_bc_100(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    """DenseNet-BC-100 (CIFAR, k=12): 0.8M parameters, for 32 x 32 images."""
    return _create("densenet_bc_100", num_classes, in_chans, kwargs)
