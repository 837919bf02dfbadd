"""Writing files so that a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the destination's own folder (a rename across
filesystems is a copy, not atomic), is flushed to disk, then renamed over the destination with
``os.replace``. Killed at any point, the destination is untouched and no temporary file is
left behind except one with a hidden ``.NAME.*.tmp`` name beside it.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_replace",
    "atomic_write",
    "atomic_write_text",
    "fsync_file",
    "fsync_folder",
    "new_file_mode",
    "remove_stale_temporaries",
    "temporary_sibling",
]


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s content to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
def temporary_sibling(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder and filesystem), removed on exit if left;
    it has the permissions ``path`` will have (:func:`new_file_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        try:
            os.fchmod(fd, new_file_mode(path))
        finally:
            os.close(fd)
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove the temporary files a writer of ``path`` left when it was killed mid-write (only
    safe where one writer at a time writes ``path``)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            stale.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def atomic_replace(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends without an error it
    is flushed and renamed over ``path``, otherwise it is removed and ``path`` is untouched (so
    a check inside the block can still refuse the file)."""
    path = Path(path)
    with temporary_sibling(path, suffix) as tmp:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    fsync_folder(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it, rename it to ``path``."""
    with atomic_replace(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
