"""LightningDataModules: Fashion-MNIST and CIFAR-10 as in-memory tensors, and image folders."""

from __future__ import annotations

from .augment import BatchAugment, available_augmentations
from .cifar10 import CIFAR10DataModule
from .fashion_mnist import FashionMNISTDataModule
from .image_folder import ImageFolderDataModule

__all__ = [
    "BatchAugment",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "available_augmentations",
]
