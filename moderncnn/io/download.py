"""Download weight files into torch's cache and check them against the hash in their name.

Files go where torchvision puts them, ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``),
so a file torchvision already downloaded is reused as is. A name such as
``resnet18-f37072fd.pth`` carries the first hex digits of the file's SHA-256; like
torchvision's ``check_hash`` we check it, and also on every later load of a cached file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from .atomic import atomic_replace
from .errors import ConfigError, DataError, ModernCNNError

__all__ = [
    "WeightsDownloadError",
    "WeightsHashError",
    "cache_dir",
    "cached_download",
    "check_hash",
    "hash_prefix",
    "sha256_file",
]

# torch.hub's convention: "<name>-<sha256 prefix>.<ext>"; 8+ hex digits, so a name like
# "resnet-v2.pth" is not read as a hash.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
CHUNK = 1 << 20  # bytes read per step, for the hash and the download


class WeightsDownloadError(ModernCNNError, OSError):
    """A weights URL could not be downloaded (offline, moved, refused)."""


class WeightsHashError(DataError):
    """A weights file's SHA-256 does not start with the prefix in its name."""


def cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: torchvision's weights cache, shared with it."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix in a torch.hub-style file name (``resnet18-f37072fd.pth``), or None."""
    found = HASH_IN_NAME.search(file_name)
    return found.group(1) if found else None


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# (path, size, mtime_ns) -> checked, so a process loading the same file twice hashes it once.
_CHECKED: set[tuple[str, int, int]] = set()


def check_hash(path: str | Path) -> None:
    """Raise :class:`WeightsHashError` if ``path``'s SHA-256 does not match its name's prefix."""
    path = Path(path)
    prefix = hash_prefix(path.name)
    if prefix is None:
        return
    stat = path.stat()
    stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if stamp in _CHECKED:
        return
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise WeightsHashError(
            f"{path}: SHA-256 {digest[: len(prefix)]}... does not match the {prefix!r} in its "
            "name: the file is corrupt, truncated or not the published one. Delete it and "
            "download it again"
        )
    _CHECKED.add(stamp)


def _check_url(url: str) -> str:
    parts = urlparse(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(
            f"weights URL must be https://... (plain http can be tampered with), got {url!r}"
        )
    name = os.path.basename(parts.path)
    if not name:
        raise ConfigError(f"weights URL {url!r} does not end in a file name")
    return name


def _download(url: str, dst: Path, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``dst``, then rename it (atomic)."""
    from tqdm.auto import tqdm

    with atomic_replace(dst, suffix=".partial") as tmp:
        request = Request(url, headers={"User-Agent": "moderncnn"})
        with tmp.open("wb") as f, urlopen(request) as r:
            size = int(r.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=size, unit="B", unit_scale=True, desc=dst.name, disable=not progress)
            with bar:
                while chunk := r.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        prefix = hash_prefix(dst.name)
        if prefix is not None and not (digest := sha256_file(tmp)).startswith(prefix):
            raise WeightsHashError(
                f"downloaded {url}: SHA-256 {digest[: len(prefix)]}... does not match the "
                f"{prefix!r} in its name; the download was corrupted, try again"
            )
    stat = dst.stat()
    _CHECKED.add((str(dst.resolve()), stat.st_size, stat.st_mtime_ns))


def cached_download(url: str, progress: bool = True) -> Path:
    """The local copy of ``url`` in :func:`cache_dir`, downloaded first if it is not there.

    Raises:
        ValueError: not an ``https://`` URL.
        WeightsDownloadError: the download failed; the message names the URL and the path
            to put the file at by hand (for offline machines).
        WeightsHashError: the file's SHA-256 does not match the prefix in its name.
    """
    dst = cache_dir() / _check_url(url)
    if not dst.is_file():
        try:
            _download(url, dst, progress)
        except (URLError, TimeoutError, ConnectionError) as err:
            raise WeightsDownloadError(
                f"could not download {url} ({getattr(err, 'reason', err)}). If this machine is "
                f"offline, download that file elsewhere and copy it to {dst} (the cache folder "
                "is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to move it)"
            ) from err
    check_hash(dst)
    return dst
