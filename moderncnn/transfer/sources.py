"""Data modules as a source of images for feature extraction: their loaders, identity and
evaluation transform."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from moderncnn.data.files import content_stamps
from moderncnn.io.card import Preprocess
from moderncnn.io.errors import DataError

__all__ = [
    "datamodule_files",
    "datamodule_identity",
    "datamodule_loaders",
    "datamodule_preprocess",
]


def datamodule_loaders(dm: Any, batch_size: int, num_workers: int) -> dict[str, DataLoader]:
    """In-order, unaugmented loaders of a data module's train/val/test datasets.

    The data module's own datasets and collation are kept; a training set that augments in
    its ``transform`` gets the module's ``eval_transform`` instead (ImageFolderDataModule),
    since a frozen backbone's features are taken once, not per epoch.
    """
    loaders = {}
    for split in ("train", "val", "test"):
        if hasattr(dm, "evaluation_dataset"):  # the module gives its splits for evaluation
            dataset = dm.evaluation_dataset(split)
            if dataset is not None and len(dataset) > 0:
                loaders[split] = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
            continue
        try:
            given = getattr(dm, f"{split}_dataloader")()
        except (NotImplementedError, RuntimeError, AttributeError, ValueError):
            continue  # a split this data module does not have
        if not isinstance(given, DataLoader) or len(given.dataset) == 0:
            continue
        dataset = given.dataset
        eval_transform = getattr(dm, "eval_transform", None)
        if eval_transform is not None and getattr(dataset, "transform", None) is not None:
            dataset = copy.copy(dataset)
            dataset.transform = eval_transform
        loaders[split] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=given.collate_fn,
        )
    if not loaders:
        raise DataError(f"{type(dm).__name__} gave no train/val/test dataloader")
    return loaders


def datamodule_files(loader: DataLoader) -> list[str]:
    """The image file of each sample, for datasets that list ``samples`` as (path, label)."""
    return [str(path) for path, _ in getattr(loader.dataset, "samples", [])]


def datamodule_identity(dm: Any, loaders: dict[str, DataLoader]) -> dict[str, Any]:
    """What identifies a data module's images: class, hyperparameters, files (their content)."""
    files = [
        [split, *stamp]
        for split, loader in loaders.items()
        for stamp in content_stamps([Path(name) for name in datamodule_files(loader)])
    ]
    identity = {
        "class": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "hparams": dict(getattr(dm, "hparams", {}) or {}),
        "sizes": {split: len(loader.dataset) for split, loader in loaders.items()},
        "files": files,
    }
    if hasattr(dm, "content_identity"):  # images without files (packed chunks)
        identity["content"] = dm.content_identity()
    return identity


def datamodule_preprocess(dm: Any, image_size: int | None) -> Preprocess | None:
    """The data module's evaluation size and normalisation, when it exposes them."""
    preprocess = Preprocess.of_datamodule(dm)
    if preprocess is None or not image_size:
        return preprocess
    # batches are resized to image_size after the module's own transform
    return Preprocess(image_size, None, preprocess.mean, preprocess.std)
