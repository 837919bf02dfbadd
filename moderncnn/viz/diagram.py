"""An architecture picture: a network's stages as boxes with their output shapes.

Drawn the way the notes draw ResNet and GoogLeNet: one box per top-level stage, top to bottom
in forward order, each with its name, type, output shape (C x H x W) and parameter count. A
stage of identical blocks says how many (``layer2: 2 × BasicBlock``); an Inception block shows
its branches side by side, each with its kernels and output channels, joined by a concat box.
Shapes come from one eval-mode forward pass with hooks, on the ``meta`` device for a model
given by name (instant even for Inception-v4)::

    plot_architecture("googlenet", save="googlenet.png")
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from moderncnn.inference import load_model
from moderncnn.io.atomic import atomic_write
from moderncnn.io.errors import ConfigError, OutputError
from moderncnn.models import create_model, layer_table

from ._figure import finish, new_figure
from .diagram_stages import Branch, Stage, architecture_stages, format_params, format_shape

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Branch", "Stage", "architecture_stages", "plot_architecture", "show_summary", "summary"
]  # fmt: skip

# Layout, in inches (the axes' data units are inches, so text sizes and boxes agree).
BOX_W, BOX_H, GAP = 5.4, 0.62, 0.34  # a stage box; the arrow between two boxes
BRANCH_GAP, LINE_H = 0.1, 0.15  # between branch boxes; one line of 7 pt text
COLUMN_GAP, MARGIN, MAX_COLUMN_H = 0.9, 0.3, 15.0  # columns wrap above MAX_COLUMN_H
DPI = 130  # saved files: 7 pt branch text is 12 pixels high
# Fill by what a box holds: the first word found in its type name wins; blocks are orange.
COLORS = {"Pool": "#dcefd8", "Conv": "#d6e6f5", "Linear": "#e8dcf0", "Norm": "#eeeeee"}
COLORS |= dict.fromkeys(("ReLU", "Identity", "Dropout"), "#eeeeee")
BLOCK_COLOR, INCEPTION_COLOR = "#fbe3c8", "#fdf3d0"


def plot_architecture(
    model_or_name: nn.Module | str,
    input_size: tuple[int, ...] | None = None,
    save: str | Path | None = None,
    **model_kwargs: Any,
) -> Figure:
    """The stages of a network as a column of boxes (several columns for a deep one).

    Args:
        model_or_name: a module, or a registered name (built on the ``meta`` device).
        input_size: one input, ``(C, H, W)``; default: the model's ``input_size`` (its
            training resolution), else 3 × 224 × 224.
        save: file to write the figure to (``.png``, ``.pdf``, ``.svg``); None: only return it.
        **model_kwargs: for a name, passed to :func:`~moderncnn.create_model`
            (``num_classes=10``).
    """
    model, title = _model(model_or_name, model_kwargs)
    input_size = tuple(input_size or getattr(model, "input_size", (3, 224, 224)))
    smallest = getattr(model, "min_input_size", None)
    if smallest and any(s < m for s, m in zip(input_size[1:], smallest[1:], strict=True)):
        raise ConfigError(f"input size {input_size} is smaller than {title}'s minimum {smallest}")
    stages = architecture_stages(model, input_size)
    params = sum(p.numel() for p in model.parameters())
    heading = f"{title}   ·   input {format_shape(input_size)}   ·   {format_params(params)}"
    drawn = {s.name.split(".")[0] for s in stages}
    skipped = [n for n, _ in model.named_children() if n not in drawn]
    return finish(_draw(stages, heading, input_size, skipped), save, dpi=DPI)


def summary(
    model: nn.Module | str | Path | None = None,
    input_size: tuple[int, ...] | None = None,
    depth: int = 3,
    batch_size: int = 1,
    *,
    arch: str | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    out: str | Path | None = None,
) -> layer_table.ModelSummary:
    """Layer table of a network: output shapes, parameters and MACs; a diagram if asked.

    Args:
        model: a module, or the trained artifact (a .ckpt, probe or saved-model folder).
        input_size: one input without the batch dimension, e.g. (3, 224, 224); default: a
            named or trained model's input size (its training resolution), else 3 x 224 x 224.
        depth: deepest module level listed (1 = the model's direct children).
        batch_size: leading dimension of the input; MACs are for the whole batch.
        arch: instead of model, a registered model name (moderncnn models), built on the
            meta device (no memory, no compute).
        num_classes: classifier width, with arch.
        in_chans: input image channels, with arch.
        out: also draw the stages to this file (.png, .pdf or .svg).
    """
    if (model is None) == (arch is None):
        raise ConfigError("summary: give model (a module or a trained artifact) or arch (a name)")
    target = _writable(str(out)) if out is not None else None  # refused before any work
    if arch is not None:
        network, name = _named_model(arch, num_classes, in_chans), arch
    elif isinstance(model, nn.Module):
        network, name = model, type(model).__name__
        input_size = input_size or (3, 224, 224)
    else:
        loaded = load_model(model)
        if loaded.network is None:
            raise ConfigError(f"{model} is an exported model; give its checkpoint or folder")
        network, name = loaded.network, str(model)
        in_chans = loaded.card.in_chans
    if input_size is None:
        input_size = (in_chans, *getattr(network, "input_size", (3, 224, 224))[1:])
    input_size = tuple(input_size)
    smallest = getattr(network, "min_input_size", None)
    if smallest and any(s < m for s, m in zip(input_size[1:], smallest[1:], strict=True)):
        raise ConfigError(
            f"input size {input_size} is smaller than {name}'s minimum {tuple(smallest)}; "
            "pass a larger input_size"
        )
    try:
        table = layer_table.summary(network, input_size, depth, batch_size)
    except RuntimeError as err:  # e.g. input channels that differ from the model's
        raise ConfigError(f"{name} on input {input_size}: {' '.join(str(err).split())}") from err
    if target is not None:
        kwargs = {"num_classes": num_classes, "in_chans": in_chans} if arch else {}
        _save(plot_architecture(arch or network, input_size, **kwargs), *target)
    return table


def show_summary(table: layer_table.ModelSummary, arguments: dict[str, Any]) -> int:
    """What ``moderncnn summary`` prints: the table, and where the diagram is."""
    print(table)
    if arguments.get("out") is not None:
        print(f"diagram: {arguments['out']}")
    return 0


def _named_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    try:
        # No memory and no weight init: shapes and MACs need no real numbers.
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except (NotImplementedError, RuntimeError):  # an __init__ that needs real data
        return create_model(name, **kwargs)


def _model(model_or_name: nn.Module | str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    if isinstance(model_or_name, nn.Module):
        if kwargs:
            raise ConfigError(f"model kwargs {sorted(kwargs)} apply to a model name, not a module")
        return model_or_name, type(model_or_name).__name__
    try:
        with torch.device("meta"):  # shapes need no memory and no weight init
            return create_model(model_or_name, **kwargs), model_or_name
    except (NotImplementedError, RuntimeError):  # an __init__ that needs real data
        return create_model(model_or_name, **kwargs), model_or_name


def _color(stage: Stage) -> str:
    if stage.branches or stage.repeats > 1:
        return INCEPTION_COLOR if stage.branches else BLOCK_COLOR
    return next((c for word, c in COLORS.items() if word in stage.type), BLOCK_COLOR)


# --- drawing --------------------------------------------------------------------------------


def _branch_lines(stage: Stage) -> list[list[str]]:
    """Each branch box's text lines, its kernels wrapped to the box's width."""
    n = len(stage.branches)
    width = (BOX_W - 0.3 - (n - 1) * BRANCH_GAP) / n
    chars = max(8, int(width / 0.06))  # 7 pt text: about 0.06 in a character
    return [
        [b.name, *textwrap.wrap(b.ops, chars, break_on_hyphens=False), f"{b.channels} ch"]
        for b in stage.branches
    ]


def _height(stage: Stage) -> float:
    if not stage.branches:
        return BOX_H
    lines = max(len(lines) for lines in _branch_lines(stage))
    return BOX_H + 0.25 + (0.12 + LINE_H * lines) + 0.3 + 0.3 + 0.12


def _columns(heights: list[float]) -> list[list[int]]:
    """Indices of the boxes in each column: about equal columns, none over MAX_COLUMN_H."""
    total = sum(heights) + GAP * (len(heights) - 1)
    count = max(1, int(-(-total // MAX_COLUMN_H)))
    target, columns, height = total / count, [[]], 0.0
    for i, h in enumerate(heights):
        if columns[-1] and height + h / 2 > target and len(columns) < count:
            columns.append([])
            height = 0.0
        columns[-1].append(i)
        height += h + GAP
    return columns


def _draw(
    stages: list[Stage], heading: str, input_size: tuple[int, ...], skipped: list[str]
) -> Figure:
    boxes: list[Stage | None] = [None, *stages]  # None: the input box
    heights = [0.42, *map(_height, stages)]
    columns = _columns(heights)
    column_h = max(sum(heights[i] for i in c) + GAP * (len(c) - 1) for c in columns)
    width = len(columns) * BOX_W + (len(columns) - 1) * COLUMN_GAP + 2 * MARGIN
    height = column_h + 2 * MARGIN + 0.45 + (0.3 if skipped else 0)
    figure = new_figure(figsize=(width, height))
    ax = figure.add_subplot()
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(MARGIN, height - MARGIN, heading, fontsize=11, weight="bold", va="top")
    top = height - MARGIN - 0.45
    previous: tuple[float, float] | None = None  # bottom centre of the last box drawn
    for c, column in enumerate(columns):
        x, y = MARGIN + c * (BOX_W + COLUMN_GAP), top
        for i in column:
            centre = x + BOX_W / 2
            if previous is not None:
                _connect(ax, previous, (centre, y), top)
                before = boxes[i - 1].output_shape if boxes[i - 1] else input_size
                after = boxes[i].input_shape if boxes[i] else None
                if after and before and len(before) == 3 and len(after) == 1:  # in forward()
                    label = f"global pool, flatten → {after[0]}"
                    style = {"fontsize": 7.5, "style": "italic", "color": "#444444"}
                    ax.text(centre + 0.12, y + GAP / 2, label, va="center", **style)
            if boxes[i] is None:
                _box(ax, x + 1.2, y - heights[i], BOX_W - 2.4, heights[i], "#ffffff", "input")
                label = f"input   {format_shape(input_size)}"
                ax.text(centre, y - heights[i] / 2, label, ha="center", va="center", fontsize=9)
            else:
                _stage_box(ax, boxes[i], x, y, heights[i])
            previous, y = (centre, y - heights[i]), y - heights[i] - GAP
    if skipped:
        note = f"not drawn (not run in eval mode): {', '.join(skipped)}"
        ax.text(MARGIN, MARGIN, note, fontsize=8, style="italic", color="#555555")
    return figure


def _connect(ax: Axes, start: tuple[float, float], end: tuple[float, float], top: float) -> None:
    """An arrow from one box to the next; into a new column, routed through the gutter."""
    (x0, y0), (x1, y1) = start, end
    style = {"arrowstyle": "-|>", "color": "#444444", "lw": 1.0, "shrinkA": 0, "shrinkB": 0}
    if abs(x0 - x1) < 1e-6:
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=style)
        return
    gutter, low, high = x1 - BOX_W / 2 - COLUMN_GAP / 2, y0 - GAP / 2, top + 0.2
    xs, ys = [x0, x0, gutter, gutter, x1], [y0, low, low, high, high]
    ax.plot(xs, ys, color="#444444", lw=1.0)
    ax.annotate("", xy=(x1, y1), xytext=(x1, high), arrowprops=style)


def _box(ax: Axes, x: float, y: float, w: float, h: float, color: str, gid: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    patch = FancyBboxPatch(
        (x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06", fc=color, ec="#555555", lw=0.9
    )
    patch.set_gid(gid)
    ax.add_patch(patch)


def _stage_box(ax: Axes, stage: Stage, x: float, top: float, h: float) -> None:
    centre = x + BOX_W / 2
    _box(ax, x, top - h, BOX_W, h, _color(stage), f"stage:{stage.name}")
    ax.text(centre, top - 0.2, stage.title, ha="center", va="center", fontsize=9, weight="bold")
    ax.text(centre, top - 0.44, stage.details, ha="center", va="center", fontsize=8)
    if stage.branches:
        _branch_row(ax, stage, x, top - BOX_H)


def _branch_row(ax: Axes, stage: Stage, x: float, top: float) -> None:
    """The branches side by side under the block's title, each arrowed into one concat box."""
    lines = _branch_lines(stage)
    n, pad = len(lines), 0.15
    w = (BOX_W - 2 * pad - (n - 1) * BRANCH_GAP) / n
    h = 0.12 + LINE_H * max(map(len, lines))
    fork, y_top = (x + BOX_W / 2, top + 0.02), top - 0.25
    concat_top = y_top - h - 0.3
    line = {"color": "#777777", "lw": 0.8}
    for k, (branch, text) in enumerate(zip(stage.branches, lines, strict=True)):
        bx = x + pad + k * (w + BRANCH_GAP)
        _box(ax, bx, y_top - h, w, h, "#ffffff", f"branch:{stage.name}:{branch.name}")
        ax.plot([fork[0], bx + w / 2], [fork[1], y_top], **line)
        ax.plot([bx + w / 2, x + BOX_W / 2], [y_top - h, concat_top], **line)
        for j, row in enumerate(text):
            weight = "bold" if j in (0, len(text) - 1) else "normal"
            y = y_top - 0.13 - j * LINE_H
            ax.text(bx + w / 2, y, row, ha="center", va="center", fontsize=7, weight=weight)
    concat = stage.after_concat or f"concat → {sum(b.channels for b in stage.branches)} ch"
    _box(ax, x + 0.9, concat_top - 0.3, BOX_W - 1.8, 0.3, "#f3f3f3", f"concat:{stage.name}")
    ax.text(x + BOX_W / 2, concat_top - 0.15, concat, ha="center", va="center", fontsize=7.5)


# --- the command ----------------------------------------------------------------------------


def _writable(target: str) -> tuple[Path, str]:
    """``target`` as a path whose folder exists, and the image format its suffix names."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(target)
    formats = FigureCanvasBase.get_supported_filetypes()
    format_ = path.suffix.lstrip(".").lower() or "png"
    if path.is_dir():
        raise OutputError(f"cannot write the diagram to {path}: it is a folder; name a .png file")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write the diagram to {path}: folder {path.parent} not found")
    if format_ not in formats:
        known = ", ".join(f".{f}" for f in sorted(formats))
        raise OutputError(f"cannot write the diagram to {path}: unknown format; use {known}")
    return path, format_


def _save(figure: Figure, path: Path, format_: str) -> None:
    """Write ``figure`` to a temporary file beside ``path``, then rename it: never half a file."""
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format=format_, dpi=DPI))
    except OSError as err:
        raise OutputError(f"cannot write the diagram to {path}: {err.strerror or err}") from err
