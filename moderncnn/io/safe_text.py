"""Text from the data (class and file names) made safe where it is written: a CSV cell that a
spreadsheet would run as a formula, a matplotlib label that would be read as mathtext."""

from __future__ import annotations

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` for a CSV cell: a leading ``'`` when a spreadsheet would read it as a formula
    (``=HYPERLINK(...)``, ``+1``, ``@SUM``), as OWASP recommends; other text unchanged."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def plain_text_label(text: str, width: int | None = None) -> str:
    """``text`` for a matplotlib label: ``$`` escaped, so ``$x$`` is not read as mathtext
    (which fails to draw when malformed, e.g. ``$\\frac$``); cut to ``width`` characters."""
    if width is not None and len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text.replace("$", r"\$")
