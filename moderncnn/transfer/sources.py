"""Where transfer-learning images come from: image folders, their splits, and the eval transform.

A folder is read the way torchvision's ``ImageFolder`` reads one -- one sub-folder per class,
classes in sorted order -- either whole (split ``"all"``) or as ``train/``, ``val/`` and
``test/`` sub-folders of that form. Files are decoded by :func:`moderncnn.data.images.load_image`
(any mode to upright RGB), and class folders are named and ordered as
:class:`moderncnn.data.ImageFolderDataModule` names them; a file that cannot be decoded is
reported and skipped, never fatal.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from moderncnn.data.image_folder import class_name, list_image_files
from moderncnn.data.images import IMAGE_EXTENSIONS, BadImageError, load_image

__all__ = [
    "SPLITS",
    "FolderSplit",
    "ImageFileDataset",
    "Preprocess",
    "collate_images",
    "find_images",
    "read_folder",
]

# Split folder names we recognise, and the split each stands for.
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Images at most this big are taken whole (already framed, like CIFAR's); larger ones get
# the ImageNet evaluation recipe: resize the short side to size / 0.875, centre-crop.
SMALL_IMAGE = 64
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Preprocess:
    """The evaluation transform of a backbone, stored with the features to redo it at predict.

    Attributes:
        image_size: side of the square the backbone sees.
        resize_size: short side before the centre crop; None resizes straight to image_size.
        mean: per-channel mean of [0, 1] pixels, subtracted.
        std: per-channel standard deviation, divided by.
    """

    image_size: int
    resize_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def for_size(cls, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Preprocess:
        """ImageNet-style resize-and-crop for large sizes; a plain resize for small ones."""
        resize = None if image_size <= SMALL_IMAGE else round(image_size / CROP_FRACTION)
        return cls(image_size, resize, tuple(mean), tuple(std))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        return cls(
            int(values["image_size"]),
            None if values["resize_size"] is None else int(values["resize_size"]),
            tuple(values["mean"]),
            tuple(values["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def transform(self) -> v2.Compose:
        """PIL RGB image -> normalised float tensor (grey when ``mean`` has one channel)."""
        size = self.image_size
        steps: list[v2.Transform] = [v2.ToImage()]
        if len(self.mean) == 1:
            steps.append(v2.Grayscale(num_output_channels=1))
        if self.resize_size is None:
            steps.append(v2.Resize((size, size), antialias=True))
        else:
            steps += [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(size)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)


class FolderSplit(NamedTuple):
    """One split of an image folder: files relative to the root, their labels (-1: none)."""

    name: str
    files: list[str]
    labels: list[int]


def find_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden files are left out."""
    return list_image_files(folder)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_names(folders: list[str]) -> list[str]:
    # Named as ImageFolderDataModule names them ("001.Albatross" -> "Albatross"), unless two
    # folders would get the same name.
    names = [class_name(folder) for folder in folders]
    return names if len(set(names)) == len(names) else folders


def read_folder(root: str | Path) -> tuple[list[str], list[FolderSplit]]:
    """Class names and splits of an image folder (see the module docstring for the layouts).

    A folder of images without class sub-folders gives one unlabelled split (labels -1).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    split_dirs = {SPLITS[p.name.lower()]: p for p in _class_dirs(root) if p.name.lower() in SPLITS}
    tops = {"all": root} if not split_dirs else split_dirs
    folders = sorted({c.name for top in tops.values() for c in _class_dirs(top)})
    index = {name: i for i, name in enumerate(folders)}
    splits = []
    for name in ("train", "val", "test", "all"):
        if name not in tops:
            continue
        top = tops[name]
        if folders:
            pairs = [(f, index[c.name]) for c in _class_dirs(top) for f in find_images(c)]
        else:
            pairs = [(f, -1) for f in find_images(top)]
        if not pairs:
            raise FileNotFoundError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {top}; expected one "
                "sub-folder of images per class (or train/, val/, test/ holding such folders)"
            )
        files = [f.relative_to(root).as_posix() for f, _ in pairs]
        splits.append(FolderSplit(name, files, [label for _, label in pairs]))
    return _class_names(folders), splits


class ImageFileDataset(Dataset):
    """Decoded, transformed image files; a file that fails to decode yields its error instead.

    Items are ``(image or None, label, index, error or None)``; :func:`collate_images` drops
    the failed ones from the batch and passes their errors on.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Any) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, int, str | None]:
        try:
            image = self.transform(load_image(self.paths[index]))
        except BadImageError as err:
            return None, self.labels[index], index, str(err)
        return image, self.labels[index], index, None


class ImageBatch(NamedTuple):
    """A batch of decoded images, the dataset indices they came from, and the failures."""

    images: Tensor | None
    labels: Tensor
    indices: Tensor
    errors: list[tuple[int, str]]


def collate_images(items: list[tuple[Tensor | None, int, int, str | None]]) -> ImageBatch:
    """Stack the decoded images of a batch; collect ``(index, error)`` of the others."""
    good = [item for item in items if item[0] is not None]
    errors = [(index, error) for image, _, index, error in items if image is None]
    return ImageBatch(
        torch.stack([item[0] for item in good]) if good else None,
        torch.tensor([item[1] for item in good], dtype=torch.long),
        torch.tensor([item[2] for item in good], dtype=torch.long),
        errors,
    )


def datamodule_loaders(dm: Any, batch_size: int, num_workers: int) -> dict[str, DataLoader]:
    """In-order, unaugmented loaders of a data module's train/val/test datasets.

    The data module's own datasets and collation are kept; a training set that augments in
    its ``transform`` gets the module's ``eval_transform`` instead (ImageFolderDataModule),
    since a frozen backbone's features are taken once, not per epoch.
    """
    loaders = {}
    for split in ("train", "val", "test"):
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
        raise ValueError(f"{type(dm).__name__} gave no train/val/test dataloader")
    return loaders


def datamodule_files(loader: DataLoader) -> list[str]:
    """The image file of each sample, for datasets that list ``samples`` as (path, label)."""
    return [str(path) for path, _ in getattr(loader.dataset, "samples", [])]


def datamodule_identity(dm: Any, loaders: dict[str, DataLoader]) -> dict[str, Any]:
    """What identifies a data module's images: class, hyperparameters, files (size, mtime)."""
    files = []
    for split, loader in loaders.items():
        for name in datamodule_files(loader):
            stat = Path(name).stat()
            files.append([split, name, stat.st_size, stat.st_mtime_ns])
    return {
        "class": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "hparams": dict(getattr(dm, "hparams", {}) or {}),
        "sizes": {split: len(loader.dataset) for split, loader in loaders.items()},
        "files": files,
    }


def datamodule_preprocess(dm: Any, image_size: int | None) -> Preprocess | None:
    """The data module's evaluation size and normalisation, when it exposes them."""
    mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
    size = getattr(dm, "image_size", None)
    size = size[0] if isinstance(size, tuple | list) else size
    if mean is None or std is None or size is None:
        return None
    if image_size:  # batches are resized to image_size after the module's own transform
        return Preprocess(image_size, None, tuple(mean), tuple(std))
    return Preprocess(int(size), getattr(dm, "resize_size", None), tuple(mean), tuple(std))
