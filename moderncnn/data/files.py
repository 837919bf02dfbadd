"""Image files for inference and feature extraction: a folder's classes and splits, and decoding
that reports a bad file instead of stopping.

A folder is read the way :class:`~moderncnn.data.ImageFolderDataModule` reads one -- one
sub-folder per class, classes in sorted order, named without a leading number -- either whole
(split ``"all"``) or, when the root holds only split folders, as ``train/``, ``val/`` and
``test/`` folders of that form (:func:`~moderncnn.data.image_folder.split_folders`). Files are
decoded by :func:`moderncnn.data.images.load_image`; one that cannot be decoded is reported and
skipped, never fatal. A class folder or an image file that is a symlink leading outside the root
is skipped and reported, as the data module skips it (``follow_symlinks=True`` follows it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from moderncnn.io.errors import DataError, MissingFileError

from .image_folder import class_folders, class_name, list_image_files, split_folders
from .images import IMAGE_EXTENSIONS, BadImageError, load_image

__all__ = [
    "DecodedImageFiles",
    "FolderSplit",
    "ImageBatch",
    "collate_images",
    "content_stamps",
    "find_images",
    "read_folder",
]

CHUNK = 1 << 20  # bytes hashed per read


class FolderSplit(NamedTuple):
    """One split of an image folder: files relative to the root, their labels (-1: none)."""

    name: str
    files: list[str]
    labels: list[int]


def find_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden files are left out."""
    return list_image_files(folder)


def _class_names(folders: list[str]) -> list[str]:
    # Named as ImageFolderDataModule names them ("001.Albatross" -> "Albatross"), unless two
    # folders would get the same name.
    names = [class_name(folder) for folder in folders]
    return names if len(set(names)) == len(names) else folders


def read_folder(
    root: str | Path,
    skipped: dict[str, list[dict[str, str]]] | None = None,
    follow_symlinks: bool = False,
) -> tuple[list[str], list[FolderSplit]]:
    """Class names and splits of an image folder (see the module docstring for the layouts).

    A folder of images without class sub-folders gives one unlabelled split (labels -1).
    Symlinks leading outside ``root`` are left out, as
    :class:`~moderncnn.data.ImageFolderDataModule` leaves them out, unless ``follow_symlinks``;
    with ``skipped``, each split's are recorded there as ``{"file": ..., "error": ...}`` (the
    file relative to ``root``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"image folder {str(root)!r} does not exist or is not a folder")
    within = None if follow_symlinks else root.resolve()
    tops = split_folders(root) or {"all": root}
    links: dict[str, dict[Path, str]] = {name: {} for name in tops}
    classes = {name: class_folders(top, within, links[name]) for name, top in tops.items()}
    folders = sorted({c.name for dirs in classes.values() for c in dirs})
    splits = [
        _read_split(root, name, tops[name], classes[name], folders, within, links[name])
        for name in ("train", "val", "test", "all")
        if name in tops
    ]
    for name, found in links.items():
        if found and skipped is not None:
            skipped[name] = [{"file": _relative(p, root), "error": e} for p, e in found.items()]
    return _class_names(folders), splits


def _read_split(
    root: Path,
    name: str,
    top: Path,
    classes: list[Path],
    folders: list[str],
    within: Path | None,
    links: dict[Path, str],
) -> FolderSplit:
    """The files under ``top`` with their labels (the index of their class folder's name in
    ``folders``; -1 where there are no class folders), relative to ``root``."""
    if folders:
        index = {folder: i for i, folder in enumerate(folders)}
        pairs = [(f, index[c.name]) for c in classes for f in list_image_files(c, within, links)]
    else:
        pairs = [(f, -1) for f in list_image_files(top, within, links)]
    if not pairs:
        raise DataError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {top}; expected one "
            "sub-folder of images per class (or only train/, val/, test/ holding such folders)"
        )
    files = [_relative(f, root) for f, _ in pairs]
    return FolderSplit(name, files, [label for _, label in pairs])


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def content_stamps(paths: Sequence[Path]) -> list[list[Any]]:
    """``[name, bytes, sha256]`` of each file: what identifies an image set's content.

    The content is hashed, not only the size and modification time, so a file replaced by
    ``cp -p`` or ``rsync -t`` (same size and mtime, other pixels) is still noticed.
    """
    stamps = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        stamps.append([str(path), path.stat().st_size, digest.hexdigest()])
    return stamps


class DecodedImageFiles(Dataset):
    """Decoded, transformed image files; a file that fails to decode yields its error instead.

    Items are ``(image or None, label, index, error or None)``; :func:`collate_images` drops
    the failed ones from the batch and passes their errors on.
    """

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], transform: Callable[[Any], Tensor]
    ) -> None:
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
