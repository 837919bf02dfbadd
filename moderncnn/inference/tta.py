"""Test-time augmentation: the mean prediction over an image batch and its views.

``moderncnn test`` and ``predict -c`` use it when a config sets ``model.tta``; ``moderncnn
predict --checkpoint ... --tta hflip`` and ``LoadedModel.predict(..., tta=[...])`` on image files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from moderncnn.io.errors import ConfigError

__all__ = ["SHIFT_PX", "TTA_VIEWS", "check_tta", "tta_logits", "views"]

TTA_VIEWS = ("hflip", "shift")
SHIFT_PX = 2  # "shift": the image moved 2 px down-right and 2 px up-left (edges replicated)


def check_tta(tta: Sequence[str] | None, what: str = "tta") -> list[str]:
    """``tta`` as a list of known view names; a ConfigError naming ``what`` otherwise."""
    if tta is None:
        return []
    if isinstance(tta, str) or any(view not in TTA_VIEWS for view in tta):
        raise ConfigError(f"{what} must be a list of {', '.join(TTA_VIEWS)}, got {tta!r}")
    return list(tta)


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
