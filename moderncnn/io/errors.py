"""One error story: everything a user can fix is a :class:`ModernCNNError`.

Each subclass also derives from the built-in exception it replaces (``ValueError``,
``FileNotFoundError``, ``OSError``), so ``except ValueError`` keeps working. The CLI prints a
``ModernCNNError`` as one line (exit status 1); any other exception is a programming error and
keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ModernCNNError",
    "MissingFileError",
    "OutputError",
]


class ModernCNNError(Exception):
    """Something the user can fix; the message names the file, key or value and what to do."""


class ConfigError(ModernCNNError, ValueError):
    """A setting (config key, argument, command-line value) that is not allowed."""


class DataError(ModernCNNError, ValueError):
    """Input data (images, a folder, a feature cache, a checkpoint's content) that is unusable."""


class MissingFileError(ModernCNNError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputError(ModernCNNError, OSError):
    """Somewhere a result cannot be written: read-only, not a folder, or a full disk."""
