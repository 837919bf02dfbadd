"""The DataLoader every data module makes, with the same rules for training batches."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

__all__ = ["batch_loader"]


def batch_loader(
    dataset: Dataset | None, batch_size: int, num_workers: int, train: bool, **kwargs: Any
) -> DataLoader:
    """Batches of ``dataset``: shuffled for training, worker processes kept between epochs;
    ``kwargs`` go to the DataLoader (``collate_fn``, ``pin_memory``).

    A last training batch of one image would make BatchNorm fail ("Expected more than 1 value
    per channel"): it is dropped, which costs at most one image per epoch.
    """
    if dataset is None:
        raise RuntimeError("call setup() (or let the Trainer call it) before the dataloaders")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) % batch_size == 1,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **kwargs,
    )
