"""A folder of extracted features that is either complete and verified, or not read at all.

Layout (open formats, readable without moderncnn)::

    <cache>/train-00000.safetensors  a shard: "features" (n x D, float32) and "labels" (n, int64)
    <cache>/train-00001.safetensors  of up to shard_size consecutive images; its metadata holds
    ...                              the cache key, the files (relative to the data root) and
                                     those skipped (unreadable); the same for val / test / "all"
    <cache>/manifest.json            written last: cache key, metadata, the shards of each split
                                     in order, size + SHA-256 of each

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), and the manifest is removed before and written after all of
them. A crash at any point therefore leaves no manifest, or one whose hashes do not match,
and :class:`FeatureCache` refuses the folder instead of reading half-written features. The
shards a crashed run finished are whole files that name their key and images: the next run
with the same key keeps them (:func:`finished_shards`) and computes only the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moderncnn.inference.distributed import Shard, plan_shards
from moderncnn.io.atomic import atomic_write, atomic_write_text
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import DataError

__all__ = [
    "MANIFEST",
    "CacheInvalidError",
    "FeatureCache",
    "finished_shards",
    "start_cache",
    "write_cache",
    "write_manifest",
    "write_shard",
]

MANIFEST = "manifest.json"
FORMAT = "moderncnn-feature-cache/2"


class CacheInvalidError(DataError):
    """A feature cache folder that is missing, incomplete or altered since it was written."""


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")


def start_cache(root: str | Path) -> Path:
    """Make ``root`` and invalidate the cache in it (its manifest goes) before shards change."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)  # the old cache is invalid from here on
    for stale in root.glob(".*.tmp"):  # left behind by a writer that was killed
        stale.unlink(missing_ok=True)
    return root


def write_shard(root: Path, key: str, shard: Shard, rows: dict[str, Any]) -> None:
    """Write one shard: ``rows`` has "features", "labels", "files" and "skipped"."""
    from safetensors.torch import save_file

    tensors = {"features": rows["features"].contiguous(), "labels": rows["labels"].long()}
    metadata = {
        "format": FORMAT,
        "key": key,
        "split": shard.split,
        "start": str(shard.start - shard.offset),  # first image's number within the split
        "images": str(len(shard)),  # rows + skipped
        "files": json.dumps(rows["files"]),
        "skipped": json.dumps(rows["skipped"]),
    }
    path = root / f"{shard.name}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _shard_header(path: Path) -> dict[str, str] | None:
    """A shard's metadata if it is a whole safetensors file whose rows match its lists."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:  # checks the data's length against the header
            metadata = f.metadata() or {}
            rows = f.get_slice("labels").get_shape()[0]
            if f.get_slice("features").get_shape()[0] != rows:
                return None
        files = json.loads(metadata["files"])
        skipped = json.loads(metadata["skipped"])
        if len(files) not in (0, rows) or rows + len(skipped) != int(metadata["images"]):
            return None
        return metadata
    except Exception:  # not ours, truncated, or not safetensors at all: computed again
        return None


def finished_shards(root: str | Path, key: str, shards: Sequence[Shard]) -> set[str]:
    """Names of the ``shards`` already in ``root``, whole, made with ``key`` for the same images
    (checked by size and count: the SHA-256 of each goes in the manifest)."""
    done = set()
    for shard in shards:
        path = Path(root) / f"{shard.name}.safetensors"
        meta = _shard_header(path) if path.is_file() else None
        if (
            meta is not None
            and meta.get("format") == FORMAT
            and meta.get("key") == key
            and meta.get("split") == shard.split
            and meta.get("start") == str(shard.start - shard.offset)
            and meta.get("images") == str(len(shard))
        ):
            done.add(shard.name)
    return done


def write_manifest(
    root: str | Path,
    key: str,
    meta: dict[str, Any],
    class_names: list[str],
    shards: Sequence[Shard],
    skipped: dict[str, list[dict[str, str]]] | None = None,
) -> FeatureCache:
    """Write the manifest of ``shards`` (all written) last, and return the cache, verified.

    ``skipped``: per split, files left out before extraction (a data module's bad files).
    """
    root = Path(root)
    missing = sorted({s.name for s in shards} - finished_shards(root, key, shards))
    if missing:
        raise CacheInvalidError(f"feature cache {root}: shards {missing[:5]} were not written")
    splits: dict[str, list[str]] = {}
    for shard in shards:
        splits.setdefault(shard.split, []).append(shard.name)
    entries = {}
    for shard in shards:
        path = root / f"{shard.name}.safetensors"
        entries[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": FORMAT,
        "key": key,
        "meta": meta,
        "class_names": class_names,
        "splits": list(splits),
        "shards": splits,
        "skipped": skipped or {},
        "files": entries,
    }
    _write_json(root / MANIFEST, manifest)
    return FeatureCache(root)


def write_cache(
    root: str | Path,
    key: str,
    meta: dict[str, Any],
    class_names: list[str],
    splits: dict[str, dict[str, Any]],
) -> FeatureCache:
    """Write a feature cache whole, one shard per split, and return it, verified.

    Args:
        root: the cache folder (created if needed).
        key: identifies the backbone, weights, transform and data that made the features.
        meta: JSON-able description (backbone, weights, stage, preprocessing, ...).
        class_names: label index -> class name.
        splits: split name -> ``{"features": Tensor, "labels": Tensor, "files": [...],
            "skipped": [{"file": ..., "error": ...}]}``.
    """
    root = start_cache(root)
    sizes = {name: len(s["labels"]) + len(s["skipped"]) for name, s in splits.items()}
    shards = plan_shards(sizes, max(max(sizes.values(), default=1), 1))
    for shard in shards:
        write_shard(root, key, shard, splits[shard.split])
    return write_manifest(root, key, meta, class_names, shards)


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
            raise CacheInvalidError(
                f"{path}: not a {FORMAT} manifest (an older cache?); run `moderncnn features` again"
            )
        return manifest

    @classmethod
    def open_if_valid(cls, root: str | Path, key: str) -> FeatureCache | None:
        """The cache at ``root`` if it is valid and was made with ``key``; None otherwise."""
        try:
            cache = cls(root)
        except CacheInvalidError:
            return None
        return cache if cache.key == key else None

    def _shards(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise KeyError(f"feature cache {self.root} has splits {self.splits}, not {split!r}")
        return [self.root / f"{name}.safetensors" for name in self.manifest["shards"][split]]

    def _split(self, split: str) -> dict[str, Tensor]:
        if split not in self._tensors:
            from safetensors.torch import load_file

            parts = [load_file(path) for path in self._shards(split)]
            parts = [p for p in parts if len(p["labels"])] or parts  # not shards of bad files
            self._tensors[split] = {
                name: torch.cat([part[name] for part in parts]) for name in ("features", "labels")
            }
        return self._tensors[split]

    def features(self, split: str) -> Tensor:
        """N x D float32 features of ``split``."""
        return self._split(split)["features"].float()

    def labels(self, split: str) -> Tensor:
        """N int64 labels of ``split`` (-1 for unlabelled images)."""
        return self._split(split)["labels"]

    def _listing(self, split: str, name: str) -> list[Any]:
        from safetensors import safe_open

        items = []
        for path in self._shards(split):
            with safe_open(str(path), "pt") as f:
                items += json.loads(f.metadata()[name])
        return items

    def files(self, split: str) -> list[str]:
        """The image file of each row of ``split``, relative to the data root."""
        return self._listing(split, "files")

    def skipped(self, split: str) -> list[dict[str, str]]:
        """Files of ``split`` that could not be decoded: ``{"file": ..., "error": ...}``."""
        return self.manifest.get("skipped", {}).get(split, []) + self._listing(split, "skipped")

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.labels(s))}" for s in self.splits)
        return f"FeatureCache({str(self.root)!r}, {self.meta.get('backbone')}, {sizes})"
