"""A layer table for any model: output shapes, parameters and multiply-accumulates (MACs).

MACs are counted by torch itself (:class:`torch.utils.flop_counter.FlopCounterMode`, which
counts convolutions and matrix products, the published convention): torchvision's ResNet-50
gives 4.089 GMACs, the number in its model table. Shapes come from forward hooks. Build the
model on the ``meta`` device for an instant summary of a big model (the CLI does)::

    with torch.device("meta"):
        model = create_model("resnet152")
    print(summary(model))
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from moderncnn.io.errors import ConfigError

from .trace import ModuleCall, Shape, sample_input, trace_forward


@dataclass(frozen=True)
class LayerRow:
    """One module of the table; ``params`` and ``macs`` include its submodules."""

    name: str
    depth: int
    type: str
    output_shape: Shape
    params: int
    macs: int
    calls: int = 1


@dataclass(frozen=True)
class StageRow:
    """One entry of a model's ``feature_info``: a stage output and its stride."""

    module: str
    output_shape: Shape
    reduction: int


@dataclass(repr=False)
class ModelSummary:
    """What :func:`summary` found; ``str()`` renders it as a table."""

    model_name: str
    input_shape: tuple[int, ...]
    output_shape: Shape
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    macs: int
    param_bytes: int
    depth: int
    stages: list[StageRow] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        """MACs of the whole batch, in units of 10^9."""
        return self.macs / 1e9

    @property
    def param_size_mb(self) -> float:
        """Size of the parameters in MB (10^6 bytes)."""
        return self.param_bytes / 1e6

    def __repr__(self) -> str:
        # The table, not a dataclass dump: what a notebook cell or the REPL shows for a bare
        # `summary(...)`. The fields stay readable as attributes.
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text display: the table."""
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the same monospace table (columns stay aligned)."""
        return f"<pre>{html.escape(str(self))}</pre>"

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "Params", "MACs")
        body = [
            (
                "  " * (r.depth - 1) + r.name,
                r.type if r.calls <= 1 else f"{r.type} (x{r.calls})",
                _format_shape(r.output_shape),
                f"{r.params:,}" if r.params else "-",
                _human(r.macs),
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

        def fmt(line: tuple[str, ...]) -> str:
            left = [f"{c:<{w}}" for c, w in zip(line[:3], widths[:3], strict=True)]
            right = [f"{c:>{w}}" for c, w in zip(line[3:], widths[3:], strict=True)]
            return "  ".join(left + right).rstrip()

        rule = "=" * len(fmt(header))
        lines = [
            f"{self.model_name}: input {_format_shape(self.input_shape)}, depth {self.depth}",
            rule,
            fmt(header),
            rule,
        ]
        lines += [fmt(line) for line in body]
        batch = self.input_shape[0] if self.input_shape else 1
        lines += [
            rule,
            f"Output shape:       {_format_shape(self.output_shape)}",
            f"Total params:       {self.total_params:,}",
            f"Trainable params:   {self.trainable_params:,}",
            f"Non-trainable:      {self.total_params - self.trainable_params:,}",
            f"MACs (G):           {self.gmacs:.3f}  (batch of {batch})",
            f"Parameter size MB:  {self.param_size_mb:.2f}",
        ]
        if self.stages:
            lines += [rule, "Stages (feature_info): module, output shape, stride"]
            width = max(len(s.module) for s in self.stages)
            shape_width = max(len(_format_shape(s.output_shape)) for s in self.stages)
            lines += [
                f"  {s.module:<{width}}  {_format_shape(s.output_shape):<{shape_width}}"
                f"  /{s.reduction}"
                for s in self.stages
            ]
        return "\n".join(lines)


def summary(
    model: nn.Module,
    input_size: tuple[int, ...] = (3, 224, 224),
    depth: int = 3,
    batch_size: int = 1,
) -> ModelSummary:
    """Run one eval-mode forward pass of ``model`` and tabulate its modules.

    Args:
        model: any module; it runs on its own device (``meta`` costs no compute) and its
            train/eval mode is restored afterwards.
        input_size: one input without the batch dimension, e.g. ``(3, 224, 224)``.
        depth: deepest module level listed (1 = the model's direct children).
        batch_size: leading dimension of the input; MACs are for the whole batch.
    """
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    x = sample_input(model, input_size, batch_size)
    counter = FlopCounterMode(display=False)
    with counter:
        calls = trace_forward(model, x)
    shapes = {name: call.output_shape for name, call in calls.items()}

    # FlopCounterMode names a module "<RootClass>.<dotted name>"; its counts include children.
    root = type(model).__name__
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    rows = [
        LayerRow(
            name=name,
            depth=name.count(".") + 1,
            type=type(module).__name__,
            output_shape=shapes.get(name),
            params=sum(p.numel() for p in module.parameters()),
            macs=flops.get(f"{root}.{name}", 0) // 2,  # one multiply-add = 2 flops
            calls=calls[name].calls if name in calls else 0,
        )
        for name, module in _forward_order(model, calls)
        if name and name.count(".") < depth
    ]
    rows = _with_functional_pool(model, rows, calls)
    params = list(model.parameters())
    stages = [
        StageRow(info.module, shapes.get(info.module), info.reduction)
        for info in getattr(model, "feature_info", [])
    ]
    return ModelSummary(
        model_name=type(model).__name__,
        input_shape=tuple(x.shape),
        output_shape=shapes.get(""),
        rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=counter.get_total_flops() // 2,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        depth=depth,
        stages=stages,
    )


def _forward_order(model: nn.Module, calls: dict[str, ModuleCall]) -> list[tuple[str, nn.Module]]:
    """The modules in the order the forward pass first runs them (ResNet's stem: conv1, bn1,
    relu, maxpool, as torchvision's forward reads), not the order ``__init__`` registered them
    (conv1, maxpool, bn1, relu). A module the pass never ran (an aux head in eval mode) stays
    just after the module registered before it."""
    keyed, last = [], (-1, 0)
    for index, (name, module) in enumerate(model.named_modules()):
        last = (calls[name].order, 0) if name in calls else (last[0], index + 1)
        keyed.append((last, index, name, module))
    return [(name, module) for _, _, name, module in sorted(keyed)]


def _with_functional_pool(
    model: nn.Module, rows: list[LayerRow], calls: dict[str, ModuleCall]
) -> list[LayerRow]:
    """A row for the global average pooling that ``forward_head`` does as a function (no
    module, so no hook sees it), just before the first head row that runs after it: its output
    is the classifier's input."""
    pooled = _classifier_input(model, calls)
    if pooled is None or not hasattr(model, "forward_head"):
        return rows
    if any(isinstance(m, nn.AdaptiveAvgPool2d | nn.AvgPool2d) and n.count(".") == 0
           for n, m in model.named_children()):  # fmt: skip
        return rows  # pooled by a module: it has its own row
    head = {getattr(model, "classifier_name", "fc"), "dropout", "head_drop"}
    at = next((i for i, r in enumerate(rows) if r.depth == 1 and r.name in head), None)
    if at is None:
        return rows
    pool = LayerRow("global_pool", 1, "adaptive_avg_pool2d", pooled, 0, 0)
    return [*rows[:at], pool, *rows[at:]]


def _classifier_input(model: nn.Module, calls: dict[str, ModuleCall]) -> Shape:
    """The shape the classifier (``get_classifier()``) was first called on, if it ran."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Module):
        return None
    name = next((n for n, m in model.named_modules() if m is classifier), None)
    return calls[name].input_shape if name in calls else None


def _format_shape(shape: Shape) -> str:
    if shape is None:
        return "-"
    if isinstance(shape, list):
        return "(" + ", ".join(_format_shape(s) for s in shape) + ")"
    return " x ".join(str(d) for d in shape)


def _human(n: int) -> str:
    """4089184256 -> '4.09G': compact MACs for the table (exact totals are printed below)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n) if n else "-"
