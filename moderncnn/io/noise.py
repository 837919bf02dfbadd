"""The one place where moderncnn silences what other libraries print on every run.

A run should print only what its user can act on. Each entry below names a message that says
nothing the user of moderncnn can act on, and why; anything else (a real deprecation in the
user's own code, a data-loader warning, ...) is left alone. :func:`silence_known_noise` runs
when ``moderncnn`` is imported; the filters match these messages only.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["SILENCED_LOG_LINES", "SILENCED_WARNINGS", "silence_known_noise"]

# (start of the warning's message, why it is silenced)
SILENCED_WARNINGS: list[tuple[str, str]] = [
    (
        "IProgress not found",
        "tqdm.auto in a notebook without ipywidgets: it falls back to the text bar, which works",
    ),
    (
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "Lightning's own use of a torch internal (lightning/pytorch/utilities/_pytree.py), "
        "fixed upstream; nothing in the user's code",
    ),
    (
        "Precision bf16-mixed is not supported by the model summary",
        "the summary's size in MB assumes 32-bit weights, which is right: bf16-mixed keeps "
        "fp32 weights (precision: auto picks it)",
    ),
]

# (start of a Lightning info line, why it is dropped)
SILENCED_LOG_LINES: list[tuple[str, str]] = [
    (
        "💡 Tip: For seamless cloud",
        "an advertisement for Lightning's cloud services, printed by every Trainer",
    ),
]

# Lightning's rank_zero_info goes through one of these two loggers (whichever loaded last).
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(text.startswith(start) for start, _ in SILENCED_LOG_LINES)


_FILTER = _DropLines()


def silence_known_noise() -> None:
    """Installs the filters (once; calling again changes nothing)."""
    for start, _ in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=_escaped(start))
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _escaped(start: str) -> str:
    """A ``warnings`` filter pattern (a regex matched at the start) for the literal text."""
    return re.escape(start)
