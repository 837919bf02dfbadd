"""A folder of extracted features that is either complete and verified, or not read at all.

Layout (open formats, readable without moderncnn)::

    <cache>/train.safetensors   "features" (N x D, float32) and "labels" (N, int64)
    <cache>/train.json          files (relative to the data root) and the files skipped
    ...                         the same for val / test, or a single "all" split
    <cache>/manifest.json       written last: cache key, metadata, size + SHA-256 of each file

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), and the manifest is removed before and written after all of
them. A crash at any point therefore leaves no manifest, or one whose hashes do not match,
and :class:`FeatureCache` refuses the folder instead of reading half-written features.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from moderncnn.io.atomic import new_file_mode
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import DataError

__all__ = ["MANIFEST", "CacheInvalidError", "FeatureCache", "write_cache"]

MANIFEST = "manifest.json"
FORMAT = "moderncnn-feature-cache/1"


class CacheInvalidError(DataError):
    """A feature cache folder that is missing, incomplete or altered since it was written."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, new_file_mode(path))  # not mkstemp's 0600
        finally:
            os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path: Path, value: Any) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1) + "\n"))


def write_cache(
    root: str | Path,
    key: str,
    meta: dict[str, Any],
    class_names: list[str],
    splits: dict[str, dict[str, Any]],
) -> FeatureCache:
    """Write a feature cache atomically (see the module docstring) and return it, verified.

    Args:
        root: the cache folder (created if needed).
        key: identifies the backbone, weights, transform and data that made the features.
        meta: JSON-able description (backbone, weights, stage, preprocessing, ...).
        class_names: label index -> class name.
        splits: split name -> ``{"features": Tensor, "labels": Tensor, "files": [...],
            "skipped": [{"file": ..., "error": ...}]}``.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)  # the old cache is invalid from here on
    for stale in root.glob(".*.tmp"):  # left behind by a writer that was killed
        stale.unlink(missing_ok=True)
    entries = {}
    for name, split in splits.items():
        tensors = {"features": split["features"].contiguous(), "labels": split["labels"].long()}
        listing = {"files": split["files"], "skipped": split["skipped"]}
        data_file, list_file = root / f"{name}.safetensors", root / f"{name}.json"
        _atomic_write(data_file, lambda tmp, t=tensors: save_file(t, str(tmp)))
        _write_json(list_file, listing)
        for path in (data_file, list_file):
            entries[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": FORMAT,
        "key": key,
        "meta": meta,
        "class_names": class_names,
        "splits": list(splits),
        "files": entries,
    }
    _write_json(root / MANIFEST, manifest)
    return FeatureCache(root)


class FeatureCache:
    """A verified feature cache: per split, features (float32 on read), labels and file names.

    Opening checks the manifest and the size and SHA-256 of every file it lists, so features
    from an interrupted or altered write are never returned.

    Raises:
        CacheInvalidError: no manifest, an unreadable one, or a file that does not match it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self._read_manifest()
        for name, expected in manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise CacheInvalidError(f"feature cache {self.root}: {name} is missing")
            if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
                raise CacheInvalidError(
                    f"feature cache {self.root}: {name} does not match the manifest (changed or "
                    "half-written); extract the features again"
                )
        self.manifest = manifest
        self.key: str = manifest["key"]
        self.meta: dict[str, Any] = manifest["meta"]
        self.class_names: list[str] = manifest["class_names"]
        self.splits: list[str] = manifest["splits"]
        self._tensors: dict[str, dict[str, Tensor]] = {}

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise CacheInvalidError(
                f"{self.root} is not a complete feature cache (no {MANIFEST}: never finished, or "
                "interrupted); run `moderncnn features` to (re)build it"
            )
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheInvalidError(f"{path}: unreadable manifest ({err})") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CacheInvalidError(f"{path}: not a {FORMAT} manifest")
        return manifest

    @classmethod
    def open_if_valid(cls, root: str | Path, key: str) -> FeatureCache | None:
        """The cache at ``root`` if it is valid and was made with ``key``; None otherwise."""
        try:
            cache = cls(root)
        except CacheInvalidError:
            return None
        return cache if cache.key == key else None

    def _split(self, split: str) -> dict[str, Tensor]:
        if split not in self.splits:
            raise KeyError(f"feature cache {self.root} has splits {self.splits}, not {split!r}")
        if split not in self._tensors:
            from safetensors.torch import load_file

            self._tensors[split] = load_file(self.root / f"{split}.safetensors")
        return self._tensors[split]

    def features(self, split: str) -> Tensor:
        """N x D float32 features of ``split``."""
        return self._split(split)["features"].float()

    def labels(self, split: str) -> Tensor:
        """N int64 labels of ``split`` (-1 for unlabelled images)."""
        return self._split(split)["labels"]

    def _listing(self, split: str) -> dict[str, Any]:
        self._split(split)  # checks the name
        return json.loads((self.root / f"{split}.json").read_text())

    def files(self, split: str) -> list[str]:
        """The image file of each row of ``split``, relative to the data root."""
        return self._listing(split)["files"]

    def skipped(self, split: str) -> list[dict[str, str]]:
        """Files of ``split`` that could not be decoded: ``{"file": ..., "error": ...}``."""
        return self._listing(split)["skipped"]

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.labels(s))}" for s in self.splits)
        return f"FeatureCache({str(self.root)!r}, {self.meta.get('backbone')}, {sizes})"
