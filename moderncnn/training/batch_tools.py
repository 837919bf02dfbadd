"""Batch-level tools of the training step: MixUp / CutMix of a training batch (soft targets,
torchvision's transforms v2); test-time augmentation lives in :mod:`moderncnn.inference.tta`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.transforms import v2

__all__ = ["Mixer", "batch_mixer"]

Mixer = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Mixer | None:
    """MixUp (Zhang et al. 2018) and/or CutMix (Yun et al. 2019) of a batch, one of the two per
    batch when both are on: ``(images, labels) -> (mixed images, soft targets)``; None if off.
    torchvision's ops run on the batch's own device."""
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
