"""Figures that work everywhere: shown in a notebook where they are made, saved as files.

A plotting function makes its figure with :func:`new_figure` and ends with :func:`finish`.
In a notebook whose backend draws pictures inline (Jupyter's default), ``finish`` shows the
figure there and then, once, wherever the call stands: in a loop, assigned to a name, followed
by ``plt.show()``, or as the cell's last expression (STYLE rules 15 and 19). Nothing here calls
``matplotlib.use``: choosing the backend is the user's. Outside IPython a figure is a plain
``Figure``, which needs no display and no backend.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderncnn.io.atomic import atomic_write
from moderncnn.io.errors import OutputError

if TYPE_CHECKING:  # matplotlib itself loads on first use
    from matplotlib.figure import Figure

# False while figures are drawn only to be saved (a run's report files): not shown.
_SHOWN: ContextVar[bool] = ContextVar("moderncnn_figures_shown", default=True)
# Attribute of a figure: the IPython execution count of the cell that showed it.
_SHOWN_IN = "_moderncnn_shown_in"


def in_ipython() -> bool:
    """Whether this code runs in an IPython session (a Jupyter kernel, the IPython shell)."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def new_figure(**kwargs: Any) -> Figure:
    """A figure that neither pyplot nor a GUI window holds.

    In IPython it is made with pyplot and closed at once: that loads the session's backend
    (whose formatters draw a figure as a picture), and closing it keeps ``plt.show()`` and
    the end of the cell from showing it a second time: :func:`finish` shows it.
    """
    if in_ipython():
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
    """Lays ``figure`` out, writes it when ``save`` names a file (``.png``, ``.pdf``, ...) and
    shows it in a notebook (:func:`show_in_notebook`).

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
    if _SHOWN.get():
        show_in_notebook(figure)
    return figure


@contextmanager
def figures_not_shown() -> Iterator[None]:
    """Figures made inside are only saved, not shown: a run's report files (``curves.png``,
    ``confusion_matrix.png``) are written during ``fit``/``test`` without filling the cell."""
    token = _SHOWN.set(False)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def show_in_notebook(figure: Figure) -> bool:
    """Shows ``figure`` in the current cell if IPython draws figures as pictures (an inline
    backend); whether it did. The figure then shows nothing more when it is the cell's value
    (its ``_ipython_display_``), so it appears exactly once; a later cell that names it
    shows it again."""
    if not in_ipython() or not _picture_formats(figure):
        return False
    from IPython import get_ipython

    _publish(figure)
    setattr(figure, _SHOWN_IN, get_ipython().execution_count)
    figure._ipython_display_ = lambda: _display_again(figure)
    return True


def _display_again(figure: Figure) -> None:
    from IPython import get_ipython

    ipython = get_ipython()
    if ipython is None or getattr(figure, _SHOWN_IN, None) != ipython.execution_count:
        _publish(figure)
        if ipython is not None:
            setattr(figure, _SHOWN_IN, ipython.execution_count)


def _picture_formats(figure: Figure) -> list[str]:
    """The MIME types other than text in which the session's formatters draw a figure."""
    from IPython import get_ipython

    formatters = get_ipython().display_formatter.formatters
    found = []
    for mime, formatter in formatters.items():
        if mime.startswith("text/") or not formatter.enabled:
            continue
        try:
            formatter.lookup(figure)
        except KeyError:
            continue
        found.append(mime)
    return found


def _publish(figure: Figure) -> None:
    """Sends the figure to the front end as the inline backend would (its formats, its DPI),
    without ``_ipython_display_`` (which would call back here)."""
    from IPython import get_ipython
    from IPython.display import publish_display_data

    formatters = get_ipython().display_formatter.formatters
    data: dict[str, Any] = {"text/plain": f"<Figure size {_size(figure)} with "}
    data["text/plain"] += f"{len(figure.axes)} Axes>"
    metadata: dict[str, Any] = {}
    for mime in _picture_formats(figure):
        output = formatters[mime](figure)
        if isinstance(output, tuple):
            output, metadata[mime] = output
        if output is not None:
            data[mime] = output
    publish_display_data(data, metadata)


def _size(figure: Figure) -> str:
    width, height = figure.get_size_inches() * figure.dpi
    return f"{width:g}x{height:g}"
