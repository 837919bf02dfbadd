"""Writing files so that a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the destination's own folder (a rename across
filesystems is a copy, not atomic), is flushed to disk, then renamed over the destination with
``os.replace``. Killed at any point, the destination is untouched and no temporary file is
left behind except one with a hidden ``.NAME.*.tmp`` name beside it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "fsync_file", "temporary_sibling"]


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s content to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def temporary_sibling(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder and filesystem), removed on exit if left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it, rename it to ``path``."""
    with temporary_sibling(path) as tmp:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
