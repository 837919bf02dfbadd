"""Shared base of the small datasets kept whole in memory as uint8 tensors (airbench-style).

The DataLoader only slices uint8 batches out of an N x C x H x W tensor (4x less to copy to
the GPU than float32); augmentation and normalisation run on whole batches on the model's
device, in :meth:`TensorDataModule.on_after_batch_transfer`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from moderncnn.io.errors import ConfigError, DataError
from moderncnn.io.pixels import denormalize, normalize

from ._checks import (
    check_non_negative_int,
    check_positive_int,
    check_seed,
    check_split_size,
    split_count,
)
from .augment import AugmentationSpec, BatchAugment
from .loaders import batch_loader
from .stats import ChannelStats


class TensorImageDataset(Dataset):
    """uint8 images (N x C x H x W) and int64 labels (N); a list of indices fetches a batch."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels):
            raise DataError(
                f"expected uint8 N x C x H x W images and N labels, got {images.dtype} "
                f"{tuple(images.shape)} images and {len(labels)} labels"
            )
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # The DataLoader's fetcher calls this with a whole batch of indices: one slice per batch
        # instead of N __getitem__ calls and a stack.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def collate_batch(batch: Any) -> Any:
    """Passes a batch from ``__getitems__`` through; collates lists of samples as usual."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


class TensorDataModule(L.LightningDataModule):
    """A labelled image dataset held in memory as uint8 tensors, augmented in batches.

    Subclasses set the class attributes and implement :meth:`load_split`.
    """

    class_names: list[str]
    in_chans: int
    image_size: tuple[int, int]
    stats: ChannelStats
    default_augmentations: list[AugmentationSpec]

    def __init__(
        self,
        *,
        batch_size: int,
        num_workers: int,
        val_size: int | float,
        seed: int,
        augmentations: list[AugmentationSpec] | None,
        train_subset: int | None,
        classes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.val_size = check_split_size("val_size", val_size)
        self.seed = check_seed("seed", seed)
        if train_subset is not None:
            check_positive_int("train_subset", train_subset)
        self.train_subset = train_subset
        if augmentations is None:
            augmentations = self.default_augmentations
        self.augmentations = list(augmentations)
        self.augment = BatchAugment(self.augmentations)  # checks the names now, not mid-fit
        self.classes = self._check_classes(classes)
        if self.classes is not None:  # an instance attribute: the class's list stays whole
            self.class_names = [self.class_names[c] for c in self.classes]
        self.num_classes = len(self.class_names)
        self.mean, self.std = self.stats
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    def _check_classes(self, classes: list[int] | None) -> list[int] | None:
        """``classes`` if it lists 2 or more distinct, valid class indices; else a ValueError."""
        if classes is None:
            return None
        total = len(self.class_names)
        ok = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
        if not ok or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ConfigError(f"classes must be 2 or more distinct class indices, got {classes!r}")
        if not all(0 <= c < total for c in classes):
            raise ConfigError(f"classes must be indices in 0..{total - 1}, got {classes!r}")
        return list(classes)

    def _select_classes(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Only the images of ``classes``, relabelled 0..k-1 in the order ``classes`` lists."""
        if self.classes is None:
            return images, labels
        size = max(int(labels.max()), *self.classes) + 1
        new_label = torch.full((size,), -1, dtype=torch.long)  # -1: a class left out
        new_label[self.classes] = torch.arange(len(self.classes))
        relabelled = new_label[labels]
        keep = relabelled >= 0
        return images[keep], relabelled[keep]

    @property
    def input_size(self) -> tuple[int, int, int]:
        """C x H x W of the images this module yields."""
        return (self.in_chans, *self.image_size)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """Loads the official training or test split: uint8 N x C x H x W images, N labels."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Loads the splits ``stage`` needs, once; train/val are a seeded split of train."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self._select_classes(*self.load_split(train=True))
            train_idx, val_idx = self._split_indices(len(labels))
            self.train_set = TensorImageDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorImageDataset(images[val_idx], labels[val_idx])
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = self._select_classes(*self.load_split(train=False))
            self.test_set = TensorImageDataset(images, labels)

    def _split_indices(self, total: int) -> tuple[Tensor, Tensor]:
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))
        if self.train_subset is not None:
            if self.train_subset > total:
                raise ConfigError(
                    f"train_subset={self.train_subset} is larger than the {total} training images"
                )
            order, total = order[: self.train_subset], self.train_subset
        note = "" if self.train_subset is None else f" (train_subset={self.train_subset})"
        num_val = split_count("val_size", self.val_size, total, note)
        # Sorted, so a subset keeps the file's order and the split is easy to inspect.
        return order[num_val:].sort().values, order[:num_val].sort().values

    def _loader(self, dataset: TensorImageDataset | None, train: bool = False) -> DataLoader:
        return batch_loader(
            dataset, self.batch_size, self.num_workers, train, collate_fn=collate_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        # val_size=0: no validation loop (Lightning skips an empty list of loaders).
        return (
            []
            if self.val_set is not None and len(self.val_set) == 0
            else self._loader(self.val_set)
        )

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augments (training only) and normalises a uint8 batch on the model's device.

        A bare tensor is the model's example input (Lightning's summary sends it through this
        hook): a blank image the network takes as it is.
        """
        if isinstance(batch, Tensor):
            return batch
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return normalize(images, self.mean, self.std), labels

    def preview_batch(self, n: int = 32, split: str = "train") -> tuple[Tensor, Tensor]:
        """``n`` seeded images of ``split`` ("train" augmented), in [0, 1] float, and labels."""
        check_positive_int("n", n)
        if split not in {"train", "val", "test"}:
            raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.prepare_data()
        self.setup("test" if split == "test" else "fit")
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
        images, labels = dataset.images[order[:n]], dataset.labels[order[:n]]
        if split == "train":
            images = self.augment(images)
        return denormalize(normalize(images, self.mean, self.std), self.mean, self.std), labels
