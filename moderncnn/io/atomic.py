"""Writing files so that a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the destination's own folder (a rename across
filesystems is a copy, not atomic), is flushed to disk, then renamed over the destination with
``os.replace``. Killed at any point, the destination is untouched and no temporary file is
left behind except one with a hidden ``.NAME.*.tmp`` name beside it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "fsync_file",
    "new_file_mode",
    "temporary_sibling",
]


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s content to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def new_file_mode(path: Path) -> int:
    """The permissions ``path`` gets: those of the file it replaces, else what the user's umask
    gives a new file (``mkstemp`` makes 0600, which would turn a 0644 model private)."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):
            return mode & 0o777
    except OSError:
        pass
    try:  # Linux states the umask here; reading it by setting it is not thread-safe
        status = Path("/proc/self/status").read_text()
        umask = int(next(line for line in status.splitlines() if line.startswith("Umask:"))[6:], 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def temporary_sibling(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder and filesystem), removed on exit if left;
    it has the permissions ``path`` will have (:func:`new_file_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, new_file_mode(path))
        finally:
            os.close(fd)
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
