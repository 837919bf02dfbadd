"""LightningDataModules: Fashion-MNIST and CIFAR-10 as in-memory tensors, and image folders."""

from __future__ import annotations

from .augment import BatchAugment, available_augmentations
from .cifar10 import CIFAR10DataModule
from .fashion_mnist import FashionMNISTDataModule
from .image_folder import ImageFolderDataModule
from .packed import StreamingDataModule, pack_image_folder

__all__ = [
    "BatchAugment",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "StreamingDataModule",
    "available_augmentations",
    "pack_image_folder",
]
