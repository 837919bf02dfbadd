"""Reading the files of a run folder (``lightning_logs/version_N``) that may have come from
someone else: a file there that is a symlink leading out of the folder is not the run's
(``curves.png -> /etc/passwd`` would end up in a shared report page), and a file re-saved in
another encoding or cut short is read as far as it is valid, never a traceback."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from moderncnn.data.image_folder import leads_outside
from moderncnn.io.errors import DataError

__all__ = ["LinkOutsideError", "read_csv_rows", "read_text", "run_file"]


class LinkOutsideError(DataError):
    """A run folder's file that is a symlink to somewhere outside the run folder."""


def run_file(folder: str | Path, name: str) -> Path | None:
    """``folder/name`` if it is a file of the run folder, else None (absent, not a file).

    Raises :class:`LinkOutsideError` when it, or a link on its way, resolves to a place outside
    the run folder (links within the folder are followed).
    """
    folder = Path(folder)
    path = folder / name
    if leads_outside(path, folder.resolve()):
        raise LinkOutsideError(
            f"{path} is a link to {path.resolve()}, outside the run folder {folder}: not read "
            "(a run folder's files are its own; copy the file in if it belongs to the run)"
        )
    return path if path.is_file() else None


def read_text(path: Path) -> str:
    """The text of ``path`` as UTF-8; bytes that are not UTF-8 (a file re-saved as Latin-1)
    become U+FFFD instead of stopping the reader."""
    return path.read_bytes().decode("utf-8", errors="replace")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header row, read as :func:`read_text` does; a file that is
    not CSV (a field over the csv module's size limit) is a :class:`DataError` naming it."""
    try:
        return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
