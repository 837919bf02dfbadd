"""Pictures of models, data and runs, as ``matplotlib.figure.Figure`` objects.

Each function returns its figure (a notebook shows it as the cell's output) and writes it to a
file only when given ``save=``; none of them calls ``matplotlib.use``.
"""

from __future__ import annotations

from .confusion import plot_confusion_matrix, read_confusion_matrix
from .curves import plot_curves, read_metrics
from .degradation import plot_degradation
from .diagram import plot_architecture
from .gradcam import Explanation, explain, grad_cam, plot_explanation
from .images import image_grid, plot_top_losses, show_batch, show_results

__all__ = [
    "Explanation",
    "explain",
    "grad_cam",
    "plot_explanation",
    "image_grid",
    "plot_architecture",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_degradation",
    "plot_top_losses",
    "read_confusion_matrix",
    "read_metrics",
    "show_batch",
    "show_results",
]
