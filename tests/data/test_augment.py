"""Batched augmentation: per-image randomness, exactness against torchvision, name checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from moderncnn.data import FashionMNISTDataModule
from moderncnn.data.augment import (
    BatchAugment,
    BatchRandomCrop,
    BatchRandomFlip,
    PerImage,
    build_transform,
    denormalize,
    normalize,
    parse_augmentations,
)


def _same_image_batch(n: int = 64, c: int = 3, size: int = 8) -> torch.Tensor:
    image = torch.randint(0, 256, (1, c, size, size), dtype=torch.uint8)
    return image.expand(n, -1, -1, -1).contiguous()


def _candidate_crops(image: torch.Tensor, padding: int, mode: str, size: int) -> torch.Tensor:
    """Every crop torchvision's pad-then-crop can produce from ``image``."""
    padded = TF.pad(image, [padding], fill=7, padding_mode=mode)
    steps = padded.shape[-1] - size + 1
    return torch.stack(
        [padded[:, y : y + size, x : x + size] for y in range(steps) for x in range(steps)]
    )


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_random_crop_draws_a_crop_per_image_that_torchvision_could_draw(mode: str) -> None:
    x = _same_image_batch(n=64, size=8)
    spec = {"RandomCrop": {"size": 8, "padding": 3, "padding_mode": mode, "fill": 7}}
    augment = BatchAugment([spec])
    assert isinstance(augment.steps[0], BatchRandomCrop)

    out = augment(x)

    assert out.shape == x.shape and out.dtype == torch.uint8
    candidates = _candidate_crops(x[0], 3, mode, 8).flatten(1)  # 49 offsets x (C*H*W)
    matches = (out.flatten(1)[:, None, :] == candidates[None]).all(-1)  # 64 x 49
    assert matches.any(1).all(), "every output must be one of torchvision's possible crops"
    offsets = {tuple(row.nonzero()[0].tolist()) for row in matches}
    assert len(offsets) > 10, "offsets must be drawn per image, not once per batch"


def test_random_crop_to_a_smaller_size_and_rectangular_padding() -> None:
    x = _same_image_batch(n=16, c=1, size=10)
    out = BatchAugment([{"RandomCrop": {"size": [6, 8], "padding": [1, 2]}}])(x)
    assert out.shape == (16, 1, 6, 8)
    # padding [1, 2] pads 1 left/right and 2 top/bottom: pixels come from the image or are 0.
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0}


def test_random_crop_larger_than_padded_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="larger than the padded image"):
        BatchAugment([{"RandomCrop": {"size": 20, "padding": 1}}])(_same_image_batch(size=8))


def test_flip_is_exact_and_drawn_per_image() -> None:
    x = _same_image_batch(n=200)
    assert torch.equal(BatchRandomFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(BatchRandomFlip(p=0.0)(x), x)
    assert torch.equal(BatchRandomFlip(p=1.0, dim=-2)(x), x.flip(-2))

    out = BatchAugment(["RandomHorizontalFlip"])(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 60 < flipped.sum() < 140  # p = 0.5 per image


def test_other_transforms_fall_back_to_per_image_v2() -> None:
    x = _same_image_batch(n=100)
    augment = BatchAugment([{"RandomInvert": {"p": 0.5}}])
    assert isinstance(augment.steps[0], PerImage)

    out = augment(x)

    inverted = (out == 255 - x).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert out.dtype == torch.uint8 and (inverted | kept).all()
    assert 0 < inverted.sum() < 100  # random per image, not one draw for the batch


def test_unknown_augmentation_names_the_value_and_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"'RandomHorizontalFlp'.*RandomHorizontalFlip"):
        BatchAugment(["RandomHorizontalFlp"])
    with pytest.raises(ValueError, match=r"'randomcrop'.*RandomCrop"):
        parse_augmentations(["randomcrop"])
    with pytest.raises(ValueError, match="unknown augmentation 'InterpolationMode'"):
        parse_augmentations(["InterpolationMode"])  # in v2, but not a transform
    with pytest.raises(ValueError, match="'Normalize' cannot be used.*normalises"):
        parse_augmentations(["Normalize"])
    with pytest.raises(ValueError, match="unknown augmentation 'Bogus'"):
        FashionMNISTDataModule(augmentations=["Bogus"])


def test_malformed_entries_and_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="one-key mapping"):
        parse_augmentations([{"RandomCrop": {"size": 8}, "RandomHorizontalFlip": {}}])
    with pytest.raises(ValueError, match="must be a list"):
        parse_augmentations("RandomCrop")
    with pytest.raises(ValueError, match=r"RandomCrop with arguments \{'sise': 8\}"):
        build_transform("RandomCrop", {"sise": 8})


def test_enum_arguments_may_be_spelled_as_strings() -> None:
    rotate = build_transform("RandomRotation", {"degrees": 10, "interpolation": "bilinear"})
    assert rotate.interpolation.value == "bilinear"


def test_normalize_and_denormalize_round_trip() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z[:, 1], (x[:, 1].float() / 255 - 0.4) / 0.25)
    torch.testing.assert_close(denormalize(z, mean, std), x.float() / 255)


def test_data_module_augments_only_training_batches() -> None:
    dm = FashionMNISTDataModule(batch_size=8)  # no data is loaded for the hook
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(8)
    expected = (x.float() / 255 - 0.2860) / 0.3530

    for trainer in (None, SimpleNamespace(training=False)):  # eval: only normalised
        dm.trainer = trainer
        images, labels = dm.on_after_batch_transfer((x, y), 0)
        torch.testing.assert_close(images, expected)
        assert labels is y

    dm.trainer = SimpleNamespace(training=True)
    images, _ = dm.on_after_batch_transfer((x, y), 0)
    assert images.dtype == torch.float32 and images.shape == x.shape
    assert not torch.allclose(images, expected)


def test_empty_list_means_no_augmentation() -> None:
    dm = FashionMNISTDataModule(augmentations=[])
    dm.trainer = SimpleNamespace(training=True)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(dm.on_after_batch_transfer((x, None), 0)[0], normalize(x, *dm.stats))
