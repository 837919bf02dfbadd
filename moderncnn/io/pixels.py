"""Pixels to network input, in one place: grey conversion, scaling to [0, 1] and the per-channel
``(x - mean) / std`` that every model card, data module and viewer applies (and undoes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["ToGrey", "denormalize", "normalize", "pixel_transform"]


class ToGrey:
    """PIL image -> 8-bit grey ("L"), exactly: an RGB image with R = G = B keeps its values.

    PIL's integer conversion weights sum to exactly 1 (19595 + 38470 + 7471 = 2^16), so a grey
    file decoded to RGB comes back unchanged; torchvision's float ``Grayscale`` on uint8 pixels
    truncates 0.9999 * v and shifts every pixel down by one level (1/255).
    """

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image):
            return image if image.mode == "L" else image.convert("L")
        return v2.functional.rgb_to_grayscale(image)

    def __repr__(self) -> str:
        return "ToGrey()"


def pixel_transform(
    geometry: list, in_chans: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """PIL image -> normalised float tensor through ``geometry`` (resize, crop, flips...).

    ``in_chans=1``: images become 8-bit grey first (:class:`ToGrey`), in training and at
    prediction alike, so a model trained on grey images sees the same pixels everywhere.
    """
    grey = [ToGrey()] if in_chans == 1 else []
    return v2.Compose(
        [
            *grey,
            v2.ToImage(),  # uint8 tensor first: the v2 kernels are fastest on tensors
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def _channel_view(values: Sequence[float], x: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (0..255) or float ([0, 1]) images -> float32 ``(x - mean) / std`` per channel."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1] for display."""
    return (x * _channel_view(std, x) + _channel_view(mean, x)).clamp(0, 1)
