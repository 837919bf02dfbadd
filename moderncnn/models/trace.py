"""What one forward pass runs: every module that was called, in the order it was entered,
with its input and output shapes. The layer table (:mod:`.layer_table`) and the architecture
diagram (:mod:`moderncnn.viz.diagram_stages`) both read a model through this one trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = ["ModuleCall", "Shape", "sample_input", "shape_of", "trace_forward"]

# A tensor's shape, the shapes of a tuple of outputs (aux heads), or None (not a tensor).
Shape = Union[tuple[int, ...], list["Shape"], None]  # noqa: UP007  (recursive alias)


@dataclass
class ModuleCall:
    """What the forward pass saw of one module (shapes include the batch dimension)."""

    order: int  # when it was first entered: a parent enters before its children
    input_shape: Shape  # of its first positional input, at its first call
    output_shape: Shape  # at its last call (a module called twice keeps its last output)
    calls: int = 0


def sample_input(model: nn.Module, input_size: tuple[int, ...], batch_size: int = 1) -> Tensor:
    """Zeros of ``(batch_size, *input_size)`` on the model's device and in its float dtype
    (``meta`` costs no compute)."""
    like = next(iter(model.parameters()), next(iter(model.buffers()), None))
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    return torch.zeros((batch_size, *input_size), device=device, dtype=dtype)


def trace_forward(model: nn.Module, x: Tensor) -> dict[str, ModuleCall]:
    """Run ``model(x)`` once in eval mode, without gradients, and return dotted name (``""`` is
    the model itself) -> :class:`ModuleCall` for every module that ran, in the order they were
    first entered. Modules that did not run (an aux head in eval mode) are absent. The model's
    train/eval modes are restored afterwards, also when the pass fails."""
    calls: dict[str, ModuleCall] = {}

    def enter(name: str):
        def pre_hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if name not in calls:
                shape = shape_of(inputs[0]) if inputs else None
                calls[name] = ModuleCall(len(calls), shape, None)

        return pre_hook

    def leave(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name].output_shape = shape_of(output)
            calls[name].calls += 1

        return hook

    modules = dict(model.named_modules())
    handles = [m.register_forward_pre_hook(enter(n)) for n, m in modules.items()]
    handles += [m.register_forward_hook(leave(n)) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    return calls


def shape_of(value: Any) -> Shape:
    """A tensor's shape, a list of shapes for a tuple or list of outputs, else None."""
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return [shape_of(v) for v in value]
    return None
