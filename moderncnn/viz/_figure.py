"""Figures that work everywhere: shown inline in Jupyter, saved as files in scripts.

Nothing here calls ``matplotlib.use``: choosing the backend is the user's (a notebook's inline
backend would otherwise be switched off for the rest of the session).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    if in_ipython():
        import matplotlib.pyplot as plt

        figure = plt.figure(**kwargs)
        plt.close(figure)
        return figure
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def finish(figure: Figure, save: str | Path | None, dpi: int = 100) -> Figure:
    """Lays ``figure`` out and, when ``save`` names a file (``.png``, ``.pdf``, ...), writes it."""
    figure.tight_layout()
    if save is not None:
        path = Path(save)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=dpi)
        except OSError as err:
            raise OutputError(f"cannot write the figure to {path}: {err.strerror or err}") from err
    return figure


def in_ipython() -> bool:
    """Whether this code runs in an IPython session (a Jupyter kernel, the IPython shell)."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None
