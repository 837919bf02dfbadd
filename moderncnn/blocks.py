"""The building blocks of the model families, in one place to build your own networks from.

    from moderncnn.blocks import BasicBlock, ConvBNAct, InceptionBlock

    unit = BasicBlock(64, 128, stride=2)        # ResNet's residual unit: relu(x + F(x))
    plain = CifarBasicBlock(16, 16, shortcut="none")   # the same unit without its shortcut
    block = InceptionBlock(192, 64, 96, 128, 16, 32, 32)   # GoogLeNet's inception (3a)

Each block is the one our registered models are built of (with torchvision's child names),
so a network assembled from them loads the same checkpoints.
"""

from __future__ import annotations

from moderncnn.models.cifar_resnet import CifarBasicBlock, ZeroPadShortcut
from moderncnn.models.densenet import DenseBlock, DenseLayer, Transition
from moderncnn.models.googlenet import InceptionBlock
from moderncnn.models.inception import (
    GridReduction,
    GridReductionAsymmetric,
    InceptionAsymmetric,
    InceptionExpanded,
    InceptionFactorized,
)
from moderncnn.models.layers import ConvBNAct
from moderncnn.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3, projection

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarBasicBlock",
    "ConvBNAct",
    "DenseBlock",
    "DenseLayer",
    "GridReduction",
    "GridReductionAsymmetric",
    "InceptionAsymmetric",
    "InceptionBlock",
    "InceptionExpanded",
    "InceptionFactorized",
    "Transition",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
    "projection",
]
