"""Images packed into litdata's chunks, streamed from a local folder or object storage.

``moderncnn pack IMAGE_FOLDER --out DIR`` (:func:`pack_image_folder`) checks that every image
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

import io
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from PIL import Image, ImageOps

from moderncnn.io.errors import ConfigError, DataError, OutputError

from ._checks import check_non_negative_int, check_positive_int, check_seed
from .files import read_folder
from .image_folder import compose_transform, eval_geometry, train_geometry
from .images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_image, to_rgb
from .stats import GREY_IMAGENET, IMAGENET

__all__ = ["StreamingDataModule", "pack_image_folder", "show_pack"]

INFO = "moderncnn.json"
FORMAT = "moderncnn-packed/1"


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


def pack_image_folder(
    folder: str | Path, out: str | Path, *, workers: int = 1, chunk_bytes: str = "64MB"
) -> Path:
    """Pack an image folder (class sub-folders, or train/val/test folders of them) into ``out``.

    Args:
        folder: image folder: class sub-folders (or train/val/test/ folders of them).
        out: a new or empty folder (or one packed before, which is replaced).
        workers: processes checking and packing the images.
        chunk_bytes: size of each chunk file; larger chunks suit object storage.
    """
    litdata = _litdata()
    root, out = Path(folder).expanduser(), Path(out).expanduser()
    check_positive_int("workers", workers)
    if out.is_dir() and any(out.iterdir()) and not (out / INFO).is_file():
        raise OutputError(f"{out} is not empty and not a packed folder: give a new --out folder")
    class_names, splits = read_folder(root)
    if len(class_names) < 2:
        raise DataError(f"{root} needs one sub-folder of images per class, 2 classes or more")
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
        self.image_size = check_positive_int("image_size", image_size)
        self.resize_size = resize_size or round(image_size * 256 / 224)
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
        stats = GREY_IMAGENET if in_chans == 1 else IMAGENET
        self.in_chans = in_chans
        self.mean = tuple(stats.mean if mean is None else mean)
        self.std = tuple(stats.std if std is None else std)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.seed = check_seed("seed", seed)
        geometry = train_geometry(self.image_size, self.resize_size, augmentations)
        self.train_transform = compose_transform(geometry, in_chans, self.mean, self.std)
        geometry = eval_geometry(self.image_size, self.resize_size)
        self.eval_transform = compose_transform(geometry, in_chans, self.mean, self.std)
        self.cache_dir = cache_dir
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # checked when packed

    def _dataset(self, split: str, train: bool):
        litdata = _litdata()
        transform = _Transformed(
            self.train_transform if train else self.eval_transform, self.in_chans == 1
        )
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
