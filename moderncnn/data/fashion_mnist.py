"""Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grayscale clothing images, 10 classes.

Read from the original gzipped IDX files, which Debian's ``dataset-fashion-mnist`` package
installs in /usr/share/datasets/fashion-mnist, and which torchvision downloads into
``<root>/FashionMNIST/raw``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moderncnn.io.errors import DataError

from . import stats
from .augment import AugmentationSpec
from .idx import read_idx
from .in_memory import TensorDataModule

# Where Debian's dataset-fashion-mnist package puts the files (module-level so tests can move it).
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_DIR = Path("data")

# split -> (images, labels) file names without the .gz suffix; the test split is the official
# 10,000-image t10k set.
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _data_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):  # as published, or already extracted
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(folders: list[Path]) -> Path | None:
    """The first folder holding all four IDX files, or None."""
    stems = [stem for pair in FILES.values() for stem in pair]
    for folder in folders:
        if all(_data_file(folder, stem) for stem in stems):
            return folder
    return None


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST as in-memory uint8 tensors, augmented and normalised in batches on device.

    Args:
        data_dir: folder with the four ``*-ubyte.gz`` files (or torchvision's layout below it,
            ``FashionMNIST/raw``). None: the Debian package's folder, then ./data.
        download: fetch the files with torchvision into ``data_dir`` (or ./data) if missing.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        val_size: validation images taken from the training split: a count, or a fraction.
        seed: seed of the train/val split and of ``train_subset``.
        augmentations: torchvision v2 transform names (see :mod:`moderncnn.data.augment`);
            None: a 2-pixel pad-and-crop and a horizontal flip; []: none.
        train_subset: use only this many (seeded, random) training images, for quick runs;
            ``val_size`` is then taken out of the subset.
        classes: keep only these classes (indices into ``CLASS_NAMES``), relabelled 0..k-1 in
            this order, e.g. [5, 6, 7, 8, 9] for a 5-class task; ``train_subset`` and
            ``val_size`` then count images of these classes. None: all 10.
    """

    class_names = CLASS_NAMES
    in_chans = 1
    image_size = (28, 28)
    stats = stats.FASHION_MNIST
    # Clothes are left-right symmetric, so flips keep the label; upside-down shoes are not
    # Fashion-MNIST images, so no vertical flip. A 2-pixel shift (7% of 28, like CIFAR's 4 of
    # 32) is the usual translation augmentation; the zero padding matches the black background.
    default_augmentations: list[AugmentationSpec] = [
        {"RandomCrop": {"size": 28, "padding": 2}},
        "RandomHorizontalFlip",
    ]

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 42,
        augmentations: list[str | dict[str, dict[str, Any]]] | None = None,
        train_subset: int | None = None,
        classes: list[int] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            seed=seed,
            augmentations=augmentations,
            train_subset=train_subset,
            classes=classes,
        )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.download = download

    def _search_folders(self) -> list[Path]:
        if self.data_dir is None:
            roots = [DEBIAN_DIR, DEFAULT_DOWNLOAD_DIR]
        else:
            roots = [Path(self.data_dir).expanduser()]
        return [folder for root in roots for folder in (root, root / "FashionMNIST" / "raw")]

    def _missing_message(self, problem: str) -> str:
        target = Path(self.data_dir).expanduser() if self.data_dir else DEFAULT_DOWNLOAD_DIR
        names = ", ".join(f"{stem}.gz" for pair in FILES.values() for stem in pair)
        return (
            f"{problem}. Get the data in one of these ways:\n"
            "  - Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs the files "
            f"in {DEBIAN_DIR}; leave data_dir unset)\n"
            f"  - when online: pass download=True (YAML: data.init_args.download: true) to "
            f"download them into {target}\n"
            f"  - or put the 4 files {names} in {target}"
        )

    def prepare_data(self) -> None:
        """Downloads the files with torchvision when ``download=True`` and they are missing."""
        if not self.download or find_fashion_mnist(self._search_folders()) is not None:
            return
        from torchvision.datasets import FashionMNIST

        root = Path(self.data_dir).expanduser() if self.data_dir else DEFAULT_DOWNLOAD_DIR
        try:
            for train in (True, False):
                FashionMNIST(str(root), train=train, download=True)
        except Exception as err:  # offline: URLError, RuntimeError, OSError, ...
            raise FileNotFoundError(
                self._missing_message(f"downloading Fashion-MNIST into {root} failed ({err})")
            ) from err

    def _folder(self) -> Path:
        folders = self._search_folders()
        found = find_fashion_mnist(folders)
        if found is None:
            looked = ", ".join(str(folder) for folder in folders)
            raise FileNotFoundError(self._missing_message(f"Fashion-MNIST not found in {looked}"))
        return found

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        folder = self._folder()
        split = "train" if train else "test"
        image_file, label_file = (_data_file(folder, stem) for stem in FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.shape[1:] != self.image_size or images.dtype.itemsize != 1:
            raise DataError(f"{image_file}: expected N x 28 x 28 uint8 images, got {images.shape}")
        if labels.shape != (len(images),) or labels.max(initial=0) >= len(CLASS_NAMES):
            raise DataError(
                f"{label_file}: expected {len(images)} labels in 0..9 to match {image_file.name}, "
                f"got shape {labels.shape}"
            )
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()
