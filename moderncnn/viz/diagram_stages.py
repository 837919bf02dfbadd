"""What an architecture picture shows: a network's stages, read off one forward pass.

A stage is a top-level module in forward order, or a run of identical blocks drawn once with
their count; an Inception-style block also lists its parallel branches (modules named
``branch...``), each with its kernels and output channels. :mod:`.diagram` draws them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import groupby
from typing import NamedTuple

from torch import nn

from moderncnn.io.errors import ConfigError
from moderncnn.models.trace import Shape, sample_input, trace_forward

__all__ = ["Branch", "Stage", "architecture_stages", "format_params", "format_shape"]

# Branch modules are named "branch..." (torchvision, timm); a branch spread over several
# attributes numbers its steps: Inception v3's branch5x5_1, branch5x5_2; "_2a"/"_2b" run side
# by side and are concatenated (Inception v3's expanded block, Inception-v4's Inception-C).
_BRANCH_NAME = re.compile(r"(branch.*?)(?:_(\d+)[a-z]?)?")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Branch:
    """One path of an Inception block: its kernels in order and its output channels."""

    name: str
    ops: str
    channels: int


@dataclass(frozen=True)
class Stage:
    """One box: a top-level module, or ``repeats`` identical blocks drawn once."""

    name: str
    type: str
    input_shape: tuple[int, ...] | None  # one sample, no batch dimension
    output_shape: tuple[int, ...] | None
    params: int
    last: str  # dotted name of the module whose output the box shows
    repeats: int = 1
    ops: str = ""  # kernels of a small stage: "7×7/2"
    branches: tuple[Branch, ...] = ()
    after_concat: str = ""  # what follows the concat: "1×1 → + input" (Inception-ResNet)

    @property
    def title(self) -> str:
        kind = f"{self.repeats} × {self.type}" if self.repeats > 1 else self.type
        return f"{self.name}: {kind}" + (f"  {self.ops}" if self.ops else "")

    @property
    def details(self) -> str:
        return f"{format_shape(self.output_shape)}   ·   {format_params(self.params)}"


class _Call(NamedTuple):
    """What the forward pass saw of one module (shapes of one sample, no batch dimension)."""

    order: int  # when it was first entered
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


def architecture_stages(model: nn.Module, input_size: tuple[int, ...]) -> list[Stage]:
    """The boxes of :func:`~moderncnn.viz.plot_architecture`: one forward pass of one sample.

    The model's top-level children in forward order (children its eval-mode forward never calls,
    such as auxiliary heads, are left out); a top-level ``nn.Sequential`` of mixed blocks
    (DenseNet's and Inception-v4's ``features``) is opened, and runs of identical blocks in it
    are drawn once with their count.
    """
    calls = _trace(model, input_size)
    stages: list[Stage] = []
    for name, child in _called_children(model, "", calls):
        if type(child) is nn.Sequential and len({type(c) for c in child.children()}) > 1:
            stages += _runs([_stage(n, c, calls) for n, c in _called_children(child, name, calls)])
        else:
            stages.append(_stage(name, child, calls))
    return stages


def _trace(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, _Call]:
    """Dotted name -> what one forward pass of one sample saw of it, for every module that ran
    (the model itself left out)."""
    try:
        calls = trace_forward(model, sample_input(model, input_size))
    except RuntimeError as err:
        message = f"{type(model).__name__} does not run on input {input_size}: {err}"
        raise ConfigError(message) from err
    return {
        name: _Call(call.order, _one_sample(call.input_shape), _one_sample(call.output_shape))
        for name, call in calls.items()
        if name
    }


def _one_sample(shape: Shape) -> tuple[int, ...] | None:
    """A tensor's shape without its batch dimension; None for anything else."""
    return shape[1:] if isinstance(shape, tuple) else None


def _called_children(
    module: nn.Module, prefix: str, calls: dict[str, _Call]
) -> list[tuple[str, nn.Module]]:
    """``module``'s children that ran, as (dotted name, child), in the order they first ran."""
    named = [(f"{prefix}.{n}" if prefix else n, c) for n, c in module.named_children()]
    return sorted(((n, c) for n, c in named if n in calls), key=lambda item: calls[item[0]].order)


def _stage(name: str, module: nn.Module, calls: dict[str, _Call]) -> Stage:
    children = _called_children(module, name, calls)
    repeated = isinstance(module, _CONTAINERS) and len(children) > 1
    repeated = repeated and len({type(c) for _, c in children}) == 1
    block_name, block = children[0] if repeated else (name, module)
    branches, after_concat = _branches(block_name, block, calls)
    ops = _ops(module)
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        ops = ops.split(" ", 1)[-1]  # the type already says which pool
    # A chain only where it is one: other modules may run kernels side by side (StemPoolConv).
    chain = "→" not in ops or (isinstance(module, nn.Sequential) and ops.count("→") == 1)
    return Stage(
        name=name,
        type=type(block).__name__,
        input_shape=calls[name].input_shape,
        output_shape=calls[name].output_shape,
        params=sum(p.numel() for p in module.parameters()),
        last=name,
        repeats=len(children) if repeated else 1,
        ops=ops if chain and not branches and not repeated else "",
        branches=branches,
        after_concat=after_concat,
    )


def _runs(stages: list[Stage]) -> list[Stage]:
    """Consecutive identical blocks (type, shape, parameters) merged into one with a count."""
    merged: list[Stage] = []
    for _, group in groupby(stages, key=lambda s: (s.type, s.output_shape, s.params, s.repeats)):
        run = list(group)
        if len(run) == 1 or run[0].repeats > 1:  # a DenseBlock is a run of its own already
            merged += run
            continue
        first, last = run[0], run[-1]
        name = f"{first.name}–{last.name.rsplit('.', 1)[-1]}"  # features.6–9
        merged.append(
            replace(
                first, name=name, last=last.name, repeats=len(run), params=first.params * len(run)
            )
        )
    return merged


# One step of a branch: (its step number, the module's dotted name, the module).
_Step = tuple[int, str, nn.Module]


def _branches(
    prefix: str, block: nn.Module, calls: dict[str, _Call]
) -> tuple[tuple[Branch, ...], str]:
    """The parallel branches of an Inception-style block, and what runs after their concat."""
    groups, rest = _branch_groups(prefix, block, calls)
    if len(groups) < 2:
        return (), ""
    branches = [_branch(key, steps, calls) for key, steps in groups.items()]
    _, shape_in, shape_out = calls[prefix]
    concat = sum(b.channels for b in branches)
    if rest:  # Inception-ResNet: a 1x1 conv back to the input's width, added to the input
        tail = " → ".join(o for o in map(_ops, rest) if o)
        residual = " → + input" if shape_in == shape_out else ""
        return tuple(branches), f"concat {concat} ch → {tail}{residual}"
    if shape_out and shape_out[0] > concat:  # a pool in forward(), not a module: pass-through
        branches.append(Branch("pool", "pool (in forward)", shape_out[0] - concat))
    return tuple(branches), ""


def _branch_groups(
    prefix: str, block: nn.Module, calls: dict[str, _Call]
) -> tuple[dict[str, list[_Step]], list[nn.Module]]:
    """The block's children that ran, as branch name -> its steps, and the other children."""
    groups: dict[str, list[_Step]] = {}
    rest: list[nn.Module] = []
    for name, child in _called_children(block, prefix, calls):
        match = _BRANCH_NAME.fullmatch(name.rsplit(".", 1)[-1])
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2) or 0), name, child))
        else:
            rest.append(child)
    return groups, rest


def _branch(key: str, steps: list[_Step], calls: dict[str, _Call]) -> Branch:
    """One branch: its kernels step by step (side-by-side modules joined by "|") and the
    channels of its last step's outputs."""
    last = max(step for step, _, _ in steps)
    ends = [calls[n].output_shape for step, n, _ in steps if step == last]
    channels = sum(shape[0] for shape in ends if shape)
    by_step: dict[int, list[str]] = {}
    for step, _, child in steps:
        by_step.setdefault(step, []).append(_ops(child))
    ops = " → ".join(" | ".join(o for o in same if o) for same in by_step.values())
    return Branch(key, ops.strip(" →") or "-", channels)


def _ops(module: nn.Module) -> str:
    """The kernels of ``module`` in order: ``"1×1 → 3×3/2 → max 3×3"``."""
    ops = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            kernel = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            stride = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            op = "×".join(map(str, kernel)) + (f"/{stride[0]}" if max(stride) > 1 else "")
            ops.append(op if isinstance(m, nn.Conv2d) else f"{type(m).__name__[:3].lower()} {op}")
    return " → ".join(ops)


def format_params(params: int) -> str:
    """``11689512`` -> ``"11.69M params"``."""
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if params >= scale:
            return f"{params / scale:.2f}{unit} params"
    return f"{params} params" if params else "no params"


def format_shape(shape: tuple[int, ...] | None) -> str:
    """``(256, 28, 28)`` -> ``"256 × 28 × 28"``: C × H × W of one sample."""
    return "-" if shape is None else " × ".join(str(d) for d in shape)
