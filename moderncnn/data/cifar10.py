"""CIFAR-10 (Krizhevsky, 2009): 60,000 32x32 colour images, 10 classes, from its python format.

The "python version" is a tar.gz of pickled dicts: ``data_batch_1..5`` (10,000 images each),
``test_batch`` and ``batches.meta``. A pickle can run any code when loaded, so the batches are
read with :class:`CifarUnpickler`, which only lets through the numpy functions that rebuild an
array; a tampered file fails with :class:`UnsafePickleError` instead of running its payload.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moderncnn.io.errors import DataError

from . import stats
from .augment import AugmentationSpec
from .in_memory import TensorDataModule

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

# The only globals a CIFAR-10 batch references: numpy's array reconstructor (under its numpy 1
# and numpy 2 module names), the ndarray type and dtype. Everything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy array-reconstruction allowlist."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, lists, dicts, strings and numbers."""

    def __init__(self, file: Any, path: Path) -> None:
        # latin1: the batches were pickled by Python 2; numpy needs latin1 to rebuild its arrays.
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise UnsafePickleError(
            f"{self.path}: refusing to load global {module}.{name}; a CIFAR-10 batch holds only "
            "numpy arrays, lists and dicts, so this file is not a genuine CIFAR-10 file. "
            "Delete it and get the dataset again"
        )


def load_pickled_dict(path: Path) -> dict[str, Any]:
    """Safely unpickles a CIFAR-10 batch file; bytes keys become str (b"data" -> "data")."""
    with open(path, "rb") as file:
        try:
            obj = CifarUnpickler(file, path).load()
        except UnsafePickleError:
            raise
        except Exception as err:
            raise DataError(f"{path}: not a readable CIFAR-10 batch ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: v for key, v in obj.items()}


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One batch file -> uint8 images N x 3 x 32 x 32 and int64 labels N."""
    batch = load_pickled_dict(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: expected 'data' to be a uint8 N x 3072 array")
    integers = isinstance(labels, list | tuple | np.ndarray) and all(
        isinstance(label, int | np.integer) and not isinstance(label, bool) for label in labels
    )
    if labels is not None and not integers:
        raise DataError(
            f"{path}: expected 'labels' to be a list of integers, got {type(labels).__name__}"
        )
    if data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(data):
        raise DataError(
            f"{path}: expected 'data' N x 3072 and N 'labels', got {data.shape} and "
            f"{None if labels is None else len(labels)} labels"
        )
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (OverflowError, ValueError) as err:
        raise DataError(f"{path}: labels must be in 0..9 ({err})") from err
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    # Each row is the red, green then blue 32x32 plane, row-major.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


def extract_safely(archive: Path, destination: Path) -> None:
    """Extracts a tar archive, refusing absolute paths, '..' components, links and devices."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name.replace("\\", "/")).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or ":" in member.name:
                    raise DataError(
                        f"{archive}: refusing to extract {member.name!r}: absolute path or '..'"
                    )
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive}: refusing to extract {member.name!r}: links and special "
                        "files are not part of CIFAR-10"
                    )
            # The "data" filter (Python >= 3.11.4) re-checks the same on extraction.
            filter_kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(destination, members=members, **filter_kw)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot extract ({err}); delete it and get it again") from err


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 as in-memory uint8 tensors, augmented and normalised in batches on device.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
            (extracted there on first use); the batches folder itself is accepted too.
        download: fetch the archive with torchvision into ``data_dir`` if nothing is found.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        val_size: validation images taken from the training split: a count, or a fraction.
        seed: seed of the train/val split and of ``train_subset``.
        augmentations: torchvision v2 transform names (see :mod:`moderncnn.data.augment`);
            None: 4-pixel pad-and-crop and a horizontal flip; []: none.
        train_subset: use only this many (seeded, random) training images, for quick runs;
            ``val_size`` is then taken out of the subset.
    """

    class_names = CLASS_NAMES
    in_chans = 3
    image_size = (32, 32)
    stats = stats.CIFAR10
    # The standard CIFAR augmentation since He et al. 2016 (ResNet, sec. 4.2): pad 4 pixels,
    # random 32x32 crop, horizontal flip.
    default_augmentations: list[AugmentationSpec] = [
        {"RandomCrop": {"size": 32, "padding": 4}},
        "RandomHorizontalFlip",
    ]

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 42,
        augmentations: list[str | dict[str, dict[str, Any]]] | None = None,
        train_subset: int | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            seed=seed,
            augmentations=augmentations,
            train_subset=train_subset,
        )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def _locate_folder(self) -> Path | None:
        """The folder with the batch files (extracting the archive if needed), or None."""
        for folder in (self.data_dir / FOLDER, self.data_dir):
            if (folder / TRAIN_BATCHES[0]).is_file() or (folder / TEST_BATCH).is_file():
                return folder
        if (self.data_dir / ARCHIVE).is_file():
            extract_safely(self.data_dir / ARCHIVE, self.data_dir)
            if (self.data_dir / FOLDER).is_dir():
                return self.data_dir / FOLDER
            raise DataError(f"{self.data_dir / ARCHIVE}: holds no {FOLDER}/ folder")
        return None

    def _missing_message(self, problem: str) -> str:
        return (
            f"{problem}. Get CIFAR-10 (python version) in one of these ways:\n"
            f"  - when online: pass download=True (YAML: data.init_args.download: true) to "
            f"download it into {self.data_dir}\n"
            f"  - or download {ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html and put "
            f"it (or its extracted {FOLDER}/ folder) in {self.data_dir}"
        )

    def prepare_data(self) -> None:
        """Extracts the archive, or downloads it when ``download=True`` and nothing is found."""
        if self._locate_folder() is not None or not self.download:
            return
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_url

        try:  # the archive only (md5-checked); torchvision's CIFAR10 would plain-unpickle it
            download_url(CIFAR10.url, str(self.data_dir), ARCHIVE, CIFAR10.tgz_md5)
        except Exception as err:  # offline: URLError, RuntimeError, OSError, ...
            raise FileNotFoundError(
                self._missing_message(f"downloading CIFAR-10 into {self.data_dir} failed ({err})")
            ) from err
        self._locate_folder()

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        folder = self._locate_folder()
        if folder is None:
            raise FileNotFoundError(
                self._missing_message(
                    f"CIFAR-10 not found: no {FOLDER}/ or {ARCHIVE} in {self.data_dir}"
                )
            )
        self._check_meta(folder)
        names = TRAIN_BATCHES if train else [TEST_BATCH]
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                self._missing_message(f"{folder} lacks {', '.join(missing)} (incomplete copy?)")
            )
        batches = [read_batch(folder / name) for name in names]
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def _check_meta(self, folder: Path) -> None:
        if not (folder / META).is_file():
            return
        names = load_pickled_dict(folder / META).get("label_names")
        if not isinstance(names, list | tuple):
            raise DataError(
                f"{folder / META}: label_names should be a list of CIFAR-10's class names, got "
                f"{type(names).__name__}"
            )
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
        if names != CLASS_NAMES:
            raise DataError(f"{folder / META}: label_names {names} are not CIFAR-10's classes")
