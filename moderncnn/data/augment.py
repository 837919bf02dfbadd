"""Augmentations named by torchvision transforms v2 class names, and batched on the device.

A data module's ``augmentations`` argument is a list whose entries are either a bare v2 class
name (``"RandomHorizontalFlip"``) or a one-key mapping from the name to its keyword arguments
(``{"RandomCrop": {"size": 32, "padding": 4}}``), so a YAML config names transforms exactly as
torchvision's documentation does.

For the in-memory tensor datasets, :class:`BatchAugment` applies the list to a whole uint8 batch
(N x C x H x W) on the model's device, airbench-style: ``RandomCrop`` and the random flips are
batched tensor ops that still draw their random parameters per image, and so is
``RandomErasing`` with a fill value. Any other v2 transform
falls back to running the torchvision transform on each image of the batch in turn: correct,
with per-image randomness, but a Python loop over the batch, so slower.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from moderncnn.io.errors import ConfigError
from moderncnn.io.pixels import denormalize, normalize  # noqa: F401  (kept importable here)

AugmentationSpec = str | dict[str, dict[str, Any]]

# v2 names that are not augmentations here, with the reason given to the user.
_NOT_AUGMENTATIONS: dict[str, str] = {
    **dict.fromkeys(
        ["Normalize", "ToImage", "ToDtype", "ToTensor", "PILToTensor", "ToPILImage"],
        "the data module converts and normalises images itself",
    ),
    **dict.fromkeys(
        ["ConvertImageDtype", "ToPureTensor"], "the data module converts images itself"
    ),
    **dict.fromkeys(
        ["MixUp", "CutMix"],
        "it mixes labels too; set model.mixup_alpha / model.cutmix_alpha (the training step "
        "mixes each batch)",
    ),
    **dict.fromkeys(
        ["Compose", "RandomApply", "RandomChoice", "RandomOrder", "Lambda"],
        "it wraps other transforms or code; list the transforms directly",
    ),
}

# YAML can only spell enums as strings; these keyword arguments are converted to the enum.
_ENUM_ARGUMENTS = {"interpolation": v2.InterpolationMode, "policy": v2.AutoAugmentPolicy}


def available_augmentations() -> list[str]:
    """Names of the torchvision v2 transforms accepted in an ``augmentations`` list."""
    names = []
    for name in dir(v2):
        obj = getattr(v2, name)
        if isinstance(obj, type) and issubclass(obj, v2.Transform) and name != "Transform":
            if name not in _NOT_AUGMENTATIONS:
                names.append(name)
    return sorted(names)


def transform_class(name: str) -> type[v2.Transform]:
    """The v2 transform class called ``name``; a ValueError suggests close names otherwise."""
    if name in _NOT_AUGMENTATIONS:
        raise ConfigError(f"{name!r} cannot be used as an augmentation: {_NOT_AUGMENTATIONS[name]}")
    known = available_augmentations()
    if name not in known:
        by_lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown augmentation {name!r}: {hint}augmentations are torchvision.transforms.v2 "
            f"class names, e.g. RandomCrop, RandomHorizontalFlip, ColorJitter, TrivialAugmentWide"
        )
    return getattr(v2, name)


def parse_augmentations(specs: Sequence[AugmentationSpec]) -> list[tuple[str, dict[str, Any]]]:
    """Checks an ``augmentations`` list and returns it as ``(name, kwargs)`` pairs."""
    if isinstance(specs, str | dict):
        raise ConfigError(f"augmentations must be a list of transforms, got {specs!r}")
    parsed = []
    for spec in specs:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, dict) and len(spec) == 1:
            name, kwargs = next(iter(spec.items()))
            kwargs = {} if kwargs is None else kwargs
            if not isinstance(kwargs, dict):
                raise ConfigError(
                    f"arguments of augmentation {name!r} must be a mapping, got {kwargs!r}"
                )
        else:
            raise ConfigError(
                "each augmentation is a transform name or a one-key mapping "
                f"{{name: {{argument: value}}}}, got {spec!r}"
            )
        transform_class(name)
        parsed.append((name, dict(kwargs)))
    return parsed


def build_transform(name: str, kwargs: dict[str, Any] | None = None) -> v2.Transform:
    """Instantiates the v2 transform ``name``; bad arguments raise a ValueError naming it."""
    cls = transform_class(name)
    kwargs = dict(kwargs or {})
    for key, enum in _ENUM_ARGUMENTS.items():
        if isinstance(kwargs.get(key), str):
            kwargs[key] = enum(kwargs[key].lower())
    try:
        transform = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ConfigError(f"augmentation {name} with arguments {kwargs!r}: {err}") from err
    # Some transforms take any size and fail only on the first image (RandomCrop(size=-3)).
    size = getattr(transform, "size", None)
    sizes = (
        [size] if isinstance(size, int) else list(size) if isinstance(size, list | tuple) else []
    )
    if any(isinstance(n, int) and n < 1 for n in sizes):
        raise ConfigError(
            f"augmentation {name} with arguments {kwargs!r}: size must be positive, got {size}"
        )
    return transform


def build_transforms(specs: Sequence[AugmentationSpec]) -> list[v2.Transform]:
    """The v2 transforms of an ``augmentations`` list, for a per-image (PIL) pipeline."""
    return [build_transform(name, kwargs) for name, kwargs in parse_augmentations(specs)]


def _source_index(pos: Tensor, length: int, mode: str) -> tuple[Tensor, Tensor]:
    """Maps positions in a padded axis to source pixels: (index, inside-the-image mask)."""
    inside = (pos >= 0) & (pos < length)
    if mode == "edge":
        pos = pos.clamp(0, length - 1)
    elif mode == "reflect":  # ... 2 1 | 0 1 2 ... (edge pixel not repeated)
        pos = pos.abs()
        pos = torch.where(pos > length - 1, 2 * (length - 1) - pos, pos)
    elif mode == "symmetric":  # ... 1 0 | 0 1 2 ... (edge pixel repeated)
        pos = torch.where(pos < 0, -pos - 1, pos)
        pos = torch.where(pos > length - 1, 2 * length - 1 - pos, pos)
    return pos.clamp(0, length - 1), inside


class BatchRandomCrop(nn.Module):
    """v2.RandomCrop on a batch: each image gets its own crop offset, in two gathers.

    Instead of materialising the padded batch, every output pixel looks up its source pixel;
    padding modes become index rules (clamp for edge, mirror for reflect/symmetric) and the
    constant mode fills the positions that fall outside the image.
    """

    def __init__(self, crop: v2.RandomCrop) -> None:
        super().__init__()
        self.size: tuple[int, int] = tuple(crop.size)
        # v2 stores padding as [left, right, top, bottom].
        self.padding: tuple[int, ...] = tuple(crop.padding) if crop.padding else (0, 0, 0, 0)
        self.padding_mode: str = crop.padding_mode
        self.fill: float = float(crop.fill)

    @staticmethod
    def supports(crop: v2.RandomCrop) -> bool:
        """Whether the batched version reproduces ``crop`` exactly."""
        return not crop.pad_if_needed and isinstance(crop.fill, int | float)

    def forward(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        crop_h, crop_w = self.size
        left, right, top, bottom = self.padding
        max_dy, max_dx = height + top + bottom - crop_h, width + left + right - crop_w
        if max_dy < 0 or max_dx < 0:
            raise ConfigError(
                f"RandomCrop size {self.size} is larger than the padded image "
                f"({height + top + bottom}, {width + left + right})"
            )
        dy = torch.randint(0, max_dy + 1, (n, 1), device=x.device)
        dx = torch.randint(0, max_dx + 1, (n, 1), device=x.device)
        rows, row_in = _source_index(
            dy + torch.arange(crop_h, device=x.device) - top, height, self.padding_mode
        )
        cols, col_in = _source_index(
            dx + torch.arange(crop_w, device=x.device) - left, width, self.padding_mode
        )
        # Two gathers (rows, then columns) with broadcast indices: about 2x faster on CPU than
        # one advanced-indexing gather of N x h x w pixels.
        rows = rows[:, None, :, None].expand(n, channels, crop_h, width)
        cols = cols[:, None, None, :].expand(n, channels, crop_h, crop_w)
        out = x.gather(2, rows).gather(3, cols)  # N x C x h x W, then N x C x h x w
        if self.padding_mode == "constant":
            inside = (row_in[:, :, None] & col_in[:, None, :])[:, None]  # N x 1 x h x w
            out = torch.where(inside, out, torch.tensor(self.fill, dtype=x.dtype, device=x.device))
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r}"


class BatchRandomFlip(nn.Module):
    """Random horizontal (``dim=-1``) or vertical (``dim=-2``) flip, drawn per image."""

    def __init__(self, p: float = 0.5, dim: int = -1) -> None:
        super().__init__()
        self.p, self.dim = p, dim

    def forward(self, x: Tensor) -> Tensor:
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(self.dim), x)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}"


class BatchRandomErasing(nn.Module):
    """v2.RandomErasing on a batch: each image draws its own rectangle, as torchvision does.

    torchvision tries up to 10 (area, aspect ratio) pairs per image and erases the first that
    fits, or nothing; here the 10 tries of every image are drawn at once and the first fitting
    one is picked, then the rectangles are one mask over the batch.
    """

    TRIES = 10

    def __init__(self, erasing: v2.RandomErasing) -> None:
        super().__init__()
        self.p = float(erasing.p)
        self.scale: tuple[float, float] = tuple(erasing.scale)
        self.ratio: tuple[float, float] = tuple(erasing.ratio)
        self.value: tuple[float, ...] = tuple(float(v) for v in erasing.value)

    @staticmethod
    def supports(erasing: v2.RandomErasing) -> bool:
        """Whether the batched version draws as ``erasing`` does (a fill value, not "random")."""
        value = erasing.value  # None for "random" (noise per pixel): left to torchvision
        return isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)

    def forward(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        if len(self.value) not in (1, channels):
            raise ConfigError(
                f"RandomErasing value {list(self.value)} has {len(self.value)} entries for "
                f"images of {channels} channels; give 1 or {channels}"
            )
        device = x.device
        area = height * width * torch.empty(n, self.TRIES, device=device).uniform_(*self.scale)
        log_ratio = torch.tensor(self.ratio, device=device).log()
        aspect = torch.empty(n, self.TRIES, device=device).uniform_(*log_ratio.tolist()).exp()
        h = (area * aspect).sqrt().round().long()
        w = (area / aspect).sqrt().round().long()
        fits = (h < height) & (w < width)
        first = fits.int().argmax(1, keepdim=True)  # the first try that fits (0 if none does)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        top = (torch.rand(n, device=device) * (height - h + 1)).long()
        left = (torch.rand(n, device=device) * (width - w + 1)).long()
        erase = fits.any(1) & (torch.rand(n, device=device) < self.p)
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # N x H
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # N x W
        mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]
        fill = torch.tensor(self.value, device=device).to(x.dtype).view(1, -1, 1, 1)
        return torch.where(mask[:, None], fill, x)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={list(self.value)}"


class PerImage(nn.Module):
    """Fallback: runs a v2 transform on each image of the batch in turn (slower, but exact)."""

    def __init__(self, transform: v2.Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        images = [self.transform(image) for image in x]
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ConfigError(
                f"{type(self.transform).__name__} produced images of different shapes "
                f"{sorted(shapes)}; give it a fixed output size"
            )
        return torch.stack(images)


def _batched(name: str, transform: v2.Transform) -> nn.Module:
    if name == "RandomCrop" and BatchRandomCrop.supports(transform):
        return BatchRandomCrop(transform)
    if name == "RandomHorizontalFlip":
        return BatchRandomFlip(transform.p, dim=-1)
    if name == "RandomVerticalFlip":
        return BatchRandomFlip(transform.p, dim=-2)
    if name == "RandomErasing" and BatchRandomErasing.supports(transform):
        return BatchRandomErasing(transform)
    return PerImage(transform)


class BatchAugment(nn.Module):
    """Applies an ``augmentations`` list to a batch of images, with per-image randomness.

    Input and output are N x C x H x W tensors of the same dtype (uint8 for the tensor data
    modules); normalisation happens afterwards (:func:`normalize`).
    """

    def __init__(self, augmentations: Sequence[AugmentationSpec]) -> None:
        super().__init__()
        steps = [
            _batched(name, build_transform(name, kwargs))
            for name, kwargs in parse_augmentations(augmentations)
        ]
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchAugment expects N x C x H x W images, got shape {x.shape}")
        for step in self.steps:
            x = step(x)
        return x
