"""Images packed into litdata's chunks, streamed from a local folder or object storage.

``moderncnn pack IMAGE_FOLDER --out DIR`` (:func:`pack_image_folder`; or a CSV of
``path,label`` rows) checks that every image
decodes and writes each split's files, unchanged (encoded bytes), with their labels and names,
into ``litdata.optimize``'s compressed-free chunks: ``DIR/train/``, ``DIR/val/``, ``DIR/test/``
(an image folder without split folders becomes ``train/``), and ``DIR/moderncnn.json`` with the
class names. Packing the same folder again gives the same chunks (litdata's
``keep_data_ordered``: worker i always packs the i-th share, in order).

:class:`StreamingDataModule` reads such a folder -- or the same layout at any URL litdata
reads, e.g. ``s3://bucket/packed`` -- with ``litdata.StreamingDataset``: chunks are shuffled
and split across processes (DDP) and loader workers by litdata itself, and its
``StreamingDataLoader`` has a ``state_dict``, which Lightning keeps in ``last.ckpt`` so that a
resumed fit goes on mid-epoch. Images get the transforms of :class:`ImageFolderDataModule`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from PIL import Image, ImageOps

from moderncnn.io.errors import ConfigError, DataError, OutputError

from ._checks import check_non_negative_int, check_positive_int, check_seed
from .files import FolderSplit, read_folder
from .image_folder import check_normalization, check_sizes, image_transforms
from .images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_image, to_rgb

__all__ = [
    "StreamingDataModule",
    "is_packed_folder",
    "pack_image_folder",
    "read_csv_list",
    "show_pack",
]

INFO = "moderncnn.json"
FORMAT = "moderncnn-packed/1"


def is_packed_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local folder written by ``moderncnn pack``."""
    info = Path(path).expanduser() / INFO
    try:
        return info.is_file() and json.loads(info.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _litdata() -> Any:
    try:
        import litdata
    except ImportError as err:
        raise ConfigError("packed data needs litdata: pip install 'moderncnn[scale]'") from err
    return litdata


def _sample(item: tuple[str, str, int]):
    """litdata worker: one checked image file -> its bytes, label and name (none if bad)."""
    path, name, label = item
    try:
        load_image(path)  # decodes fully: a file that will not decode is left out now
    except BadImageError:
        return
    yield {"image": Path(path).read_bytes(), "label": label, "file": name}


def read_csv_list(path: Path) -> tuple[list[str], list[FolderSplit]]:
    """Class names and splits of a CSV of ``path,label`` rows (and an optional ``split`` column).

    Paths are relative to the CSV's folder (or absolute); labels are class names, numbered in
    sorted order as a folder's class sub-folders are; ``split`` is train, val or test (train
    when the column is absent or empty).
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    if not {"path", "label"} <= columns:
        raise DataError(
            f"{path}: needs a header with columns path,label (and optionally split), "
            f"got {sorted(c for c in columns if c)}"
        )
    class_names = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    by_split: dict[str, tuple[list[str], list[int]]] = {}
    for line, row in enumerate(rows, start=2):
        split = (row.get("split") or "train").strip()
        if split not in ("train", "val", "test"):
            raise DataError(f"{path}:{line}: split must be train, val or test, got {split!r}")
        if not row["path"] or not (path.parent / row["path"]).is_file():
            raise DataError(f"{path}:{line}: image file {row['path']!r} not found")
        files, labels = by_split.setdefault(split, ([], []))
        files.append(row["path"])
        labels.append(index[row["label"]])
    splits = [FolderSplit(name, *by_split[name]) for name in ("train", "val", "test")
              if name in by_split]  # fmt: skip
    return class_names, splits


def pack_image_folder(
    folder: str | Path, out: str | Path, *, workers: int = 1, chunk_bytes: str = "64MB"
) -> Path:
    """Pack an image folder (class sub-folders, or train/val/test folders of them), or a CSV
    listing images (:func:`read_csv_list`), into ``out``.

    Args:
        folder: image folder: class sub-folders (or train/val/test/ folders of them), or a
            ``.csv`` file of path,label(,split) rows.
        out: a new or empty folder (or one packed before, which is replaced).
        workers: processes checking and packing the images.
        chunk_bytes: size of each chunk file; larger chunks suit object storage.
    """
    litdata = _litdata()
    root, out = Path(folder).expanduser(), Path(out).expanduser()
    check_positive_int("workers", workers)
    if out.is_dir() and any(out.iterdir()) and not (out / INFO).is_file():
        raise OutputError(f"{out} is not empty and not a packed folder: give a new --out folder")
    if root.suffix.lower() == ".csv" and root.is_file():
        class_names, splits = read_csv_list(root)
        root = root.parent
    else:
        class_names, splits = read_folder(root)
    if len(class_names) < 2:
        raise DataError(f"{root} needs images of 2 classes or more (one sub-folder each)")
    counts = {}
    for split in splits:
        name = "train" if split.name == "all" else split.name
        items = [
            (str(root / f), f, label) for f, label in zip(split.files, split.labels, strict=True)
        ]
        litdata.optimize(
            fn=_sample, inputs=items, output_dir=str(out / name), chunk_bytes=chunk_bytes,
            num_workers=min(workers, len(items)), reorder_files=False, keep_data_ordered=True,
            mode="overwrite", verbose=False, start_method="fork",
        )  # fmt: skip
        counts[name] = len(litdata.StreamingDataset(str(out / name)))
        counts[f"{name}_skipped"] = len(items) - counts[name]
    info = {"format": FORMAT, "class_names": class_names, "images": counts, "source": str(root)}
    (out / INFO).write_text(json.dumps(info, indent=1) + "\n")
    return out


def _decode(sample: dict[str, Any], transform: Any, grey: bool) -> tuple[torch.Tensor, int]:
    image = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(sample["image"]))))
    return transform(image.convert("L") if grey else image), int(sample["label"])


class _Transformed:
    """Picklable per-sample transform for litdata's workers."""

    def __init__(self, transform: Any, grey: bool) -> None:
        self.transform, self.grey = transform, grey

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        return _decode(sample, self.transform, self.grey)


class StreamingDataModule(L.LightningDataModule):
    """Images packed by ``moderncnn pack``, streamed with litdata (local folder or URL).

    Args:
        input_dir: the packed folder, or its URL (``s3://...``, ``gs://...``).
        class_names: the classes, for an ``input_dir`` whose ``moderncnn.json`` is not on a local
            disk; None: read from it.
        image_size: side of the square images given to the model (pixels).
        resize_size: evaluation resize before the center crop; None: ``image_size * 256 / 224``.
        mean: per-channel normalisation mean (default ImageNet's).
        std: per-channel normalisation std (default ImageNet's).
        batch_size: images per batch (per process).
        num_workers: loader processes streaming and decoding chunks.
        seed: seed of litdata's shuffle (chunks, then images within them).
        augmentations: as :class:`ImageFolderDataModule`'s; None: RandomResizedCrop + flip.
        in_chans: 3 (RGB) or 1 (grey).
        cache_dir: where litdata keeps downloaded chunks of a URL; None: its default.
    """

    def __init__(
        self,
        input_dir: str,
        class_names: list[str] | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
        augmentations: list[str | dict[str, dict[str, Any]]] | None = None,
        in_chans: int = 3,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        # The class names are the model's hyperparameters (linked), read here when not given.
        self.save_hyperparameters(ignore=["class_names"])
        self.input_dir = input_dir.rstrip("/")
        if class_names is None:
            info = Path(self.input_dir).expanduser() / INFO
            if not info.is_file():
                raise DataError(
                    f"{info} not found: give a folder made by `moderncnn pack` (for a URL, "
                    "also give class_names)"
                )
            class_names = json.loads(info.read_text())["class_names"]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size, self.resize_size = check_sizes(image_size, resize_size)
        self.in_chans = in_chans
        self.mean, self.std = check_normalization(in_chans, mean, std)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.seed = check_seed("seed", seed)
        # Each transform takes a packed sample (its encoded bytes) to (image tensor, label), so
        # whoever swaps a dataset's transform for the evaluation one (features) gets images.
        train, evaluation = image_transforms(
            self.image_size, self.resize_size, in_chans, self.mean, self.std, augmentations
        )
        grey = in_chans == 1
        self.train_transform = _Transformed(train, grey)
        self.eval_transform = _Transformed(evaluation, grey)
        self.cache_dir = cache_dir
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # checked when packed

    def _dataset(self, split: str, train: bool):
        litdata = _litdata()
        transform = self.train_transform if train else self.eval_transform
        return litdata.StreamingDataset(
            f"{self.input_dir}/{split}", cache_dir=self.cache_dir, shuffle=train, seed=self.seed,
            # Every process gets as many whole batches (litdata #408: unequal ones hang), so
            # under DDP a remainder of fewer than batch_size x processes images is left out
            # of each epoch (litdata's default there); one process evaluates every image.
            drop_last=True if train else None, transform=transform,
        )  # fmt: skip

    def _loader(self, split: str, train: bool = False):
        litdata = _litdata()
        return litdata.StreamingDataLoader(
            self._dataset(split, train), batch_size=self.batch_size, num_workers=self.num_workers
        )

    def set_eval_transform(self, transform: Any) -> None:
        """Evaluate with ``transform`` (decoded PIL image -> tensor) instead of this module's
        resize and crop: a backbone's own preprocessing, as a folder's images get it."""
        self.eval_transform = _Transformed(transform, self.in_chans == 1)

    def evaluation_dataset(self, split: str):
        """A split in packing order, every image, with the evaluation transform (for features
        and predictions: no shuffle, no batch dropped); None when the folder lacks it."""
        return self._dataset(split, train=False) if self._has(split) else None

    def content_identity(self) -> dict[str, Any]:
        """What identifies the packed images: each split's chunk index (names, sizes, counts),
        so a feature cache made from them is invalidated when they are packed again from
        other images."""
        local = Path(self.input_dir).expanduser()
        identity = {}
        for split in ("train", "val", "test"):
            index = local / split / "index.json"
            if index.is_file():
                chunks = json.loads(index.read_text()).get("chunks", [])
                identity[split] = [[c.get("filename"), c.get("chunk_bytes"), c.get("chunk_size")]
                                   for c in chunks]  # fmt: skip
        return identity

    def _has(self, split: str) -> bool:
        local = Path(self.input_dir).expanduser()
        return "://" in self.input_dir or (local / split / "index.json").is_file()

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val") if self._has("val") else []

    def test_dataloader(self):
        if not self._has("test"):
            raise ConfigError(f"{self.input_dir} has no test/ split: pack a folder with test/")
        return self._loader("test")


def show_pack(out: Path, arguments: dict[str, Any]) -> int:
    """What ``moderncnn pack`` prints: the images of each split, and how to stream them."""
    info = json.loads((out / INFO).read_text())
    for split, count in info["images"].items():
        if not split.endswith("_skipped"):
            skipped = info["images"][f"{split}_skipped"]
            print(
                f"{split}: {count} images" + (f", {skipped} unreadable left out" if skipped else "")
            )
    print(f"packed: {out}  (StreamingDataModule(input_dir={str(out)!r}))")
    return 0
