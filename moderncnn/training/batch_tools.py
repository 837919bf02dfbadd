"""Two batch-level tools of the training step: MixUp / CutMix of a training batch (soft targets,
torchvision's transforms v2) and test-time augmentation (the mean prediction over views)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

TTA_VIEWS = ("hflip", "shift")
SHIFT_PX = 2  # "shift": the image moved 2 px down-right and 2 px up-left (edges replicated)

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


def views(images: Tensor, tta: Sequence[str]) -> list[Tensor]:
    """The batch itself, then its ``tta`` views: ``hflip`` (mirrored), ``shift`` (two)."""
    out = [images]
    if "hflip" in tta:
        out.append(images.flip(-1))
    if "shift" in tta:
        h, w = images.shape[-2:]
        padded = F.pad(images, [SHIFT_PX] * 4, mode="replicate")
        out.append(padded[..., :h, :w])
        out.append(padded[..., 2 * SHIFT_PX :, 2 * SHIFT_PX :])
    return out


def tta_logits(run: Callable[[Tensor], Tensor], images: Tensor, tta: Sequence[str]) -> Tensor:
    """Log of the mean class probabilities over the views: logits for the loss, the metrics
    and ``argmax`` (averaging probabilities, not logits, keeps one confident view from
    dominating)."""
    probs = torch.stack([run(view).float().softmax(1) for view in views(images, tta)])
    return probs.mean(0).clamp_min(1e-12).log()
