"""Per-channel normalisation statistics, defined once for every data module and exporter.

Each pair is the mean and standard deviation of the pixel values scaled to [0, 1], per channel,
over the dataset's training split.
"""

from __future__ import annotations

from typing import NamedTuple


class ChannelStats(NamedTuple):
    """Per-channel mean and standard deviation of [0, 1]-scaled pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# Computed over the 60,000 training images (moderncnn.data.idx.read_idx on the official files).
FASHION_MNIST = ChannelStats(mean=(0.2860,), std=(0.3530,))

# The 50,000 training images. The often-copied std (0.2023, 0.1994, 0.2010) is the mean of the
# per-image stds, not the dataset std; the values below are the true per-channel std.
CIFAR10 = ChannelStats(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))

# The ImageNet-1k statistics every torchvision/timm pretrained backbone was trained with.
IMAGENET = ChannelStats(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# Grey images fed to an ImageNet network: its statistics averaged over R, G, B.
GREY_IMAGENET = ChannelStats(mean=(0.449,), std=(0.226,))

__all__ = ["CIFAR10", "FASHION_MNIST", "GREY_IMAGENET", "IMAGENET", "ChannelStats"]
