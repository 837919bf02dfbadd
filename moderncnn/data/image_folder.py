"""Image classification from a folder per class: the torchvision ImageFolder / CUB-200 layout.

    root/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
    root/002.Laysan_Albatross/...

Classes are the sub-folders sorted by name, so the class indices are torchvision's ImageFolder's;
a leading number ("001.") is dropped from the class name. A root needs two class folders or more,
and a class folder without an image is an error (:class:`EmptyClassError`, a FileNotFoundError as
in torchvision), not skipped: skipping would shift the indices of the classes after it. Every file
is decoded once in :meth:`ImageFolderDataModule.setup`; the unreadable ones are reported and
left out, so a long run never stops mid-epoch on a bad download.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from moderncnn.io.errors import ConfigError, DataError, MissingFileError
from moderncnn.io.pixels import denormalize, pixel_transform

from ._checks import check_fraction, check_non_negative_int, check_positive_int, check_seed
from .augment import AugmentationSpec, build_transforms
from .images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    BadImageError,
    load_image,
    scan_images,
)
from .loaders import batch_loader
from .stats import GREY_IMAGENET, IMAGENET

log = logging.getLogger(__name__)

_NUMERIC_PREFIX = re.compile(r"^\d+[._\-\s]+")  # "001.", "12_", "3 - "


class EmptyClassError(MissingFileError, ValueError):
    """A class folder without a usable image (FileNotFoundError, as torchvision's ImageFolder)."""


def class_name(folder: str) -> str:
    """Folder name without a leading numeric prefix: "001.Black_footed_Albatross" -> "Black_...".

    Unicode is NFC-normalised: macOS stores "Ö" in file names as "O" + combining diaeresis
    (NFD), Linux and Windows as one character, and the class map must be the same on all three.
    """
    name = unicodedata.normalize("NFC", folder)
    return _NUMERIC_PREFIX.sub("", name) or name


def leads_outside(path: Path, boundary: Path) -> bool:
    """Whether ``path`` (a symlink, or inside one) resolves to somewhere not strictly inside
    the resolved ``boundary`` folder: ``/usr``, ``..``, the boundary itself. A symlink loop
    leads nowhere (it is no file and no folder), so not outside either."""
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError after
        return False
    return target == boundary or not target.is_relative_to(boundary)


def _link_reason(path: Path, boundary: Path) -> str:
    return (
        f"a symlink to {path.resolve()}, outside {boundary}: skipped (follow_symlinks=True "
        "follows it)"
    )


def class_folders(
    root: Path, within: Path | None = None, skipped: dict[Path, str] | None = None
) -> list[Path]:
    """The non-hidden sub-folders of ``root``, sorted by name.

    With ``within`` (a resolved folder), a sub-folder that is a symlink leading outside it is
    no class: it is left out, and recorded in ``skipped`` (``{path: reason}``).
    """
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if within is not None:
        outside = [p for p in entries if p.is_symlink() and leads_outside(p, within)]
        for path in outside:
            if skipped is not None:
                skipped[path] = _link_reason(path, within)
        entries = [p for p in entries if p not in outside]
    return sorted(entries, key=lambda p: p.name)


def find_class_folders(
    root: Path, within: Path | None = None, skipped: dict[Path, str] | None = None
) -> list[str]:
    """Names of the class folders of ``root`` (:func:`class_folders`); errors name ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    folders = [p.name for p in class_folders(root, within, skipped)]
    if not folders:
        raise DataError(
            f"{root} has no class folders: put the images of each class in their own "
            f"sub-folder, e.g. {root}/cat/0001.jpg, {root}/dog/0001.jpg"
        )
    return folders


# Names of split folders, and the split each stands for.
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": root/train, "val": ..., "test": ...}`` if ``root`` holds only split folders.

    A folder named ``train`` or ``test`` beside other folders is a class like any other
    (CIFAR-100 has a class "train"); only a root whose every sub-folder is a split name is
    read as ``train/``, ``val/``, ``test/`` folders of classes.
    """
    if not root.is_dir():
        return None
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subfolders or any(p.name.lower() not in SPLITS for p in subfolders):
        return None
    layout: dict[str, Path] = {}
    for folder in sorted(subfolders):
        split = SPLITS[folder.name.lower()]
        if split in layout:
            raise DataError(
                f"{root} has two folders for the {split} split: {layout[split].name} and "
                f"{folder.name}; keep one"
            )
        layout[split] = folder
    return layout


def list_image_files(
    folder: Path, within: Path | None = None, skipped: dict[Path, str] | None = None
) -> list[Path]:
    """Files with an image suffix under ``folder`` (recursively, hidden ones skipped), sorted.

    Symlinked sub-folders are not searched. With ``within`` (a resolved folder), a file that is
    a symlink leading outside it is left out and recorded in ``skipped`` (``{path: reason}``).
    """
    files = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if within is not None and path.is_symlink() and leads_outside(path, within):
            if skipped is not None:
                skipped[path] = _link_reason(path, within)
            continue
        files.append(path)
    return sorted(files)


class FitToSize(nn.Module):
    """Resize + center-crop an image that is not yet ``size`` x ``size``; else a no-op.

    Ends the training pipeline so that user augmentations without a fixed-size crop still give
    batchable images, while a ``RandomResizedCrop(size)`` is left untouched.
    """

    def __init__(self, size: int, resize_size: int) -> None:
        super().__init__()
        self.size, self.resize_size = size, resize_size

    def forward(self, image: Tensor) -> Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        image = v2.functional.resize(image, [self.resize_size], antialias=True)
        return v2.functional.center_crop(image, [self.size, self.size])


def train_geometry(
    image_size: int, resize_size: int, augmentations: list[AugmentationSpec] | None
) -> list:
    """The training crops and flips: RandomResizedCrop + flip, or the named augmentations."""
    if augmentations is None:
        return [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    return [*build_transforms(augmentations), FitToSize(image_size, resize_size)]


def eval_geometry(image_size: int, resize_size: int) -> list:
    return [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]


def check_sizes(image_size: int, resize_size: int | None) -> tuple[int, int]:
    """(image_size, resize_size), checked; resize_size defaults to image_size * 256 / 224 (the
    ImageNet evaluation ratio)."""
    image_size = check_positive_int("image_size", image_size)
    resize = resize_size if resize_size is not None else round(image_size * 256 / 224)
    return image_size, check_positive_int("resize_size", resize)


def check_normalization(
    in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std of ``in_chans`` images (1: grey, 3: RGB), ImageNet's (or
    their grey average) where not given; a ConfigError naming the bad value."""
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
    stats = GREY_IMAGENET if in_chans == 1 else IMAGENET
    mean, std = stats.mean if mean is None else mean, stats.std if std is None else std
    if len(mean) != in_chans or len(std) != in_chans or min(std) <= 0:
        raise ConfigError(
            f"mean and std need in_chans={in_chans} values, std > 0; got mean={mean}, std={std}"
        )
    return tuple(mean), tuple(std)


def image_transforms(
    image_size: int,
    resize_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    augmentations: list[AugmentationSpec] | None,
) -> tuple[v2.Compose, v2.Compose]:
    """(training, evaluation) transforms: PIL image -> normalised tensor."""
    train = train_geometry(image_size, resize_size, augmentations)
    evaluation = eval_geometry(image_size, resize_size)
    return (
        pixel_transform(train, in_chans, mean, std),
        pixel_transform(evaluation, in_chans, mean, std),
    )


class ImageFolderSamples(Dataset):
    """(path, label) samples decoded with :func:`load_image` and transformed.

    A file deleted or changed after :meth:`ImageFolderDataModule.setup` checked it is skipped,
    not fatal (issue #12): it is named in one warning (per process) and the next readable sample
    takes its place, so the batch keeps its size and a long run does not stop mid-epoch.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], transform: v2.Transform, max_image_pixels: int | None
    ) -> None:
        self.samples, self.transform, self.max_image_pixels = samples, transform, max_image_pixels
        self.lost: dict[Path, str] = {}  # {path: reason}: unreadable since the check

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in self.lost:
                continue
            try:
                return self.transform(load_image(path, self.max_image_pixels)), label
            except BadImageError as err:
                self.lost[path] = str(err)
                log.warning(
                    "%s (deleted or changed since the check before training): skipped, the next "
                    "image of the split takes its place",
                    err,
                )
        raise DataError(
            f"none of the {len(self.samples)} image files checked before training can be read "
            f"any more (e.g. {next(iter(self.lost), None)}); were they moved or deleted?"
        )


class ImageFolderDataModule(L.LightningDataModule):
    """Images in one folder per class, decoded by DataLoader workers, with a seeded split.

    Args:
        root: folder with one sub-folder of images per class.
        val_fraction: fraction of each class's images used for validation.
        test_fraction: fraction of each class's images held out for testing (with no test_root).
        test_root: a separate test folder with the same class sub-folders (or a subset of them).
        image_size: side of the square images given to the model (pixels).
        resize_size: evaluation resize of the shorter side before the center crop (pixels);
            None: ``image_size * 256 / 224``, the ImageNet convention.
        mean: per-channel normalisation mean (default ImageNet's, for pretrained backbones;
            with ``in_chans=1`` its average over R, G, B).
        std: per-channel normalisation std (default ImageNet's, likewise).
        batch_size: images per batch.
        num_workers: DataLoader processes decoding images (set it to the CPU cores you have).
        seed: seed of the split.
        augmentations: torchvision v2 transform names replacing the default training
            augmentation (RandomResizedCrop(image_size) + RandomHorizontalFlip); []: none.
        max_image_pixels: images with more pixels are skipped as decompression bombs;
            None: no limit.
        follow_symlinks: also read class folders and image files that are symlinks leading
            outside ``root`` (``test_root`` for its files); by default they are skipped and
            reported, so a link to ``/usr`` or ``..`` cannot pull in thousands of other files.
        in_chans: 3 (RGB) or 1: every image, photos too, converted to 8-bit grey, for a model
            trained on grey images (its card's ``in_chans``).
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        test_root: str | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
        augmentations: list[str | dict[str, dict[str, Any]]] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        follow_symlinks: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"val_fraction + test_fraction must be below 1, got {val_fraction} + "
                f"{test_fraction}"
            )
        if test_root is not None and test_fraction > 0:
            raise ConfigError(
                f"give either test_root ({test_root!r}) or test_fraction ({test_fraction}), "
                "not both"
            )
        self.image_size, self.resize_size = check_sizes(image_size, resize_size)
        self.in_chans = in_chans
        self.mean, self.std = check_normalization(in_chans, mean, std)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        if max_image_pixels is not None:
            check_positive_int("max_image_pixels", max_image_pixels)
        self.max_image_pixels, self.seed = max_image_pixels, check_seed("seed", seed)

        self.root = Path(root).expanduser()
        self.test_root = None if test_root is None else Path(test_root).expanduser()
        # Symlinks leading outside these folders are skipped (unless follow_symlinks).
        self.follow_symlinks = bool(follow_symlinks)
        self._boundaries = {self.root: self.root.resolve()}
        if self.test_root is not None:
            self._boundaries[self.test_root] = self.test_root.resolve()
        self.skipped_links: dict[Path, str] = {}
        self.val_root: Path | None = None
        layout = split_folders(self.root)
        if layout is not None:  # root/train, root/val, root/test, each a folder of classes
            if "train" not in layout:
                raise DataError(
                    f"{self.root} holds only split folders ({', '.join(sorted(layout))}) but no "
                    "train/ folder to train on"
                )
            self.root = layout["train"]
            self.val_root = layout.get("val")
            if self.test_root is None and not test_fraction:
                self.test_root = layout.get("test")
        self.folders = find_class_folders(self.root, self._within(self.root), self.skipped_links)
        if len(self.folders) < 2:
            raise DataError(
                f"{self.root} has only one class folder ({self.folders[0]!r}): a classifier "
                "needs at least 2 classes; put the images of each class in their own sub-folder"
            )
        names = [class_name(folder) for folder in self.folders]
        # Two folders may strip to the same name ("1.cat", "2.cat"): keep the folder names then.
        self.class_names: list[str] = names if len(set(names)) == len(names) else self.folders
        self.num_classes = len(self.class_names)
        self.class_to_idx = {name: index for index, name in enumerate(self.class_names)}
        self.files = self._list_files(self.root, self.folders)
        self.test_files = self._held_out_files(self.test_root, "test_root")
        self.val_files = self._held_out_files(self.val_root, "val folder")

        self.train_transform, self.eval_transform = image_transforms(
            self.image_size, self.resize_size, in_chans, self.mean, self.std, augmentations
        )
        self.bad_files: dict[Path, str] | None = None  # set by setup()
        self.train_set = self.val_set = self.test_set = None

    def _list_files(self, root: Path, folders: list[str]) -> dict[int, list[Path]]:
        """Image files per label; a class folder without any is an error, not skipped.

        Skipping it would shift the labels of the folders after it away from what torchvision's
        ImageFolder gives the same root, or leave a class the model can never see.
        """
        within, skipped = self._within(root), self.skipped_links
        files = {
            self.folders.index(folder): list_image_files(root / folder, within, skipped)
            for folder in folders
        }
        empty = [str(root / self.folders[label]) for label, paths in files.items() if not paths]
        if empty:
            raise EmptyClassError(
                f"class folder(s) with no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}): "
                f"{', '.join(empty)}. Every sub-folder of {root} is a class: add images to it "
                "or remove it"
            )
        return files

    def _held_out_files(self, root: Path | None, what: str) -> dict[int, list[Path]] | None:
        """Files of a separate test (or val) folder, whose classes must be training classes."""
        if root is None:
            return None
        folders = find_class_folders(root, self._within(root), self.skipped_links)
        unknown = sorted(set(folders) - set(self.folders))
        if unknown:
            raise DataError(
                f"{what} {root} has class folders {unknown} that are not in "
                f"root {self.root}; its classes must be training classes"
            )
        return self._list_files(root, folders)

    def _within(self, folder: Path) -> Path | None:
        """The resolved folder that symlinks under ``folder`` must stay in (None: follow all):
        ``test_root`` for its own files, else ``root`` (split folders included)."""
        if self.follow_symlinks:
            return None
        for top, boundary in self._boundaries.items():
            if folder == top or top in folder.parents:
                return boundary
        return folder.resolve()

    def setup(self, stage: str | None = None) -> None:
        """Decodes every file once, reports the bad ones, and makes the seeded split."""
        if self.bad_files is None:
            self._scan()
            self._split()
        self._write_run_files_to_log_dir()

    def _scan(self) -> None:
        groups = [self.files] + [g for g in (self.test_files, self.val_files) if g]
        paths = [path for group in groups for files in group.values() for path in files]
        self.bad_files = scan_images(paths, self.max_image_pixels, workers=self.num_workers)
        self.bad_files |= self.skipped_links  # reported (and in bad_images.json) the same way
        if self.bad_files:
            lines = "\n".join(f"  {path}: {reason}" for path, reason in self.bad_files.items())
            log.warning(
                "skipping %d unreadable image file(s) of %d:\n%s",
                len(self.bad_files),
                len(paths),
                lines,
            )
        held_out = [(self.test_files or {}, self.test_root), (self.val_files or {}, self.val_root)]
        for group, root in [(self.files, self.root), *held_out]:
            for label, files in group.items():
                group[label] = [path for path in files if path not in self.bad_files]
                if not group[label] and root == self.root:
                    raise EmptyClassError(
                        f"no readable image in class folder {root / self.folders[label]}: all "
                        "its image files are unreadable (listed in the warning above); "
                        "replace them or remove the folder"
                    )

    def _split(self) -> None:
        """Per-class (stratified) seeded split, so small classes keep training images."""
        generator = torch.Generator().manual_seed(self.seed)
        train, val, test = [], [], []
        for label, files in self.files.items():
            order = torch.randperm(len(files), generator=generator).tolist()
            n_val = 0 if self.val_files is not None else round(self.val_fraction * len(files))
            n_test = round(self.test_fraction * len(files))
            while n_val + n_test >= len(files) and n_val + n_test > 0:  # keep >= 1 to train on
                n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)
            samples = [(files[i], label) for i in order]
            val += samples[:n_val]
            test += samples[n_val : n_val + n_test]
            train += samples[n_val + n_test :]
        if self.test_files is not None:
            test = [(path, label) for label, files in self.test_files.items() for path in files]
        if self.val_files is not None:
            val = [(path, label) for label, files in self.val_files.items() for path in files]
        self.train_set = ImageFolderSamples(train, self.train_transform, self.max_image_pixels)
        self.val_set = ImageFolderSamples(val, self.eval_transform, self.max_image_pixels)
        self.test_set = ImageFolderSamples(test, self.eval_transform, self.max_image_pixels)

    def write_run_files(self, directory: str | Path) -> None:
        """Writes ``class_to_idx.json`` and ``bad_images.json`` ({path: reason}) there."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bad = {str(path): reason for path, reason in (self.bad_files or {}).items()}
        for name, content in (("class_to_idx.json", self.class_to_idx), ("bad_images.json", bad)):
            # UTF-8 whatever the locale: class and file names are often not ASCII.
            text = json.dumps(content, indent=2, ensure_ascii=False)
            (directory / name).write_text(text + "\n", encoding="utf-8")

    def _write_run_files_to_log_dir(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.loggers or not trainer.is_global_zero:
            return
        # The logger's folder, not trainer.log_dir: that one is a collective call under DDP,
        # which rank 0 alone (here) would wait on forever.
        logger = trainer.loggers[0]
        directory = getattr(logger, "log_dir", None) or logger.save_dir
        if directory is not None:
            self.write_run_files(directory)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints, so a trained model keeps its class-index map."""
        return {"class_to_idx": self.class_to_idx}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("class_to_idx")
        if saved is not None and saved != self.class_to_idx:
            log.warning(
                "the checkpoint's class_to_idx differs from the folders in %s: %s vs %s",
                self.root,
                saved,
                self.class_to_idx,
            )

    def _loader(self, dataset: ImageFolderSamples | None, train: bool = False) -> DataLoader:
        pin = self.num_workers > 0 and torch.cuda.is_available()
        return batch_loader(dataset, self.batch_size, self.num_workers, train, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is not None and not len(self.val_set):
            return []  # val_fraction=0: Lightning skips validation
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is not None and not len(self.test_set):
            raise ConfigError(
                f"no test images: set test_root or test_fraction of the data module for {self.root}"
            )
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def preview_batch(self, n: int = 32, split: str = "train") -> tuple[Tensor, Tensor]:
        """``n`` seeded images of ``split`` as transformed ("train": augmented), in [0, 1]."""
        check_positive_int("n", n)
        if split not in {"train", "val", "test"}:
            raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.setup()
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        if not len(dataset):
            raise DataError(f"the {split} split of {self.root} is empty")
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(dataset), generator=generator)[:n].tolist()
        images, labels = zip(*(dataset[i] for i in order), strict=True)
        return denormalize(torch.stack(images), self.mean, self.std), torch.tensor(labels)
