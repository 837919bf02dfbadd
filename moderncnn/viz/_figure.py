"""Figures that work everywhere: shown inline in Jupyter, saved as files in scripts.

Nothing here calls ``matplotlib.use``: choosing the backend is the user's (a notebook's inline
backend would otherwise be switched off for the rest of the session).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderncnn.io.atomic import atomic_write
from moderncnn.io.errors import OutputError

if TYPE_CHECKING:  # matplotlib itself loads on first use
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A figure that no GUI window holds and that Jupyter shows once, as the cell's value.

    In IPython the figure is made with pyplot and closed at once: that loads the session's
    backend, whose display hook renders a returned figure (a bare ``Figure()`` would show as
    text), and closing it keeps pyplot from showing it a second time at the end of the cell.
    Elsewhere it is a plain ``Figure``, which needs no display and no backend.
    """
    if _in_ipython():
        import matplotlib.pyplot as plt

        figure = plt.figure(**kwargs)
        plt.close(figure)
        return figure
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_format(save: str | Path) -> str:
    """The file format of a figure written to ``save``: its suffix's (``.pdf``), else PNG.

    Raises :class:`OutputError` for a folder or a suffix matplotlib cannot write, so a command
    can check its output before it computes the figure.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(save)
    if path.is_dir():
        raise OutputError(
            f"cannot write the figure to {path}: it is a folder; give a file name such as "
            f"{path / 'figure.png'}"
        )
    kind = path.suffix[1:].lower() or "png"
    if kind not in FigureCanvasBase.get_supported_filetypes():
        raise OutputError(
            f"cannot write the figure to {path}: {path.suffix!r} is not an image format "
            "matplotlib writes; use .png, .pdf or .svg"
        )
    return kind


def finish(figure: Figure, save: str | Path | None, dpi: int = 100) -> Figure:
    """Lays ``figure`` out and, when ``save`` names a file (``.png``, ``.pdf``, ...), writes it.

    The file is exactly ``save`` (matplotlib alone would write ``save.png`` for a name without
    a suffix), written atomically: a ``save`` that is a symlink is replaced, its target never
    written through (a run folder from elsewhere may hold ``curves.png -> ~/.bashrc``).
    """
    figure.tight_layout()
    if save is not None:
        path = Path(save)
        kind = figure_format(path)
        try:
            atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format=kind))
        except OSError as err:
            raise OutputError(f"cannot write the figure to {path}: {err.strerror or err}") from err
    return figure


def _in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None
