"""Make a trained model faster to run: fold batch norm into its convolution, go channels-last.

In eval mode a batch norm is a fixed per-channel affine map, ``y = (x - mean) / sqrt(var +
eps) * weight + bias``. When it reads a convolution's output and nothing else reads that
output, the map folds into the convolution's weights and bias (Jacob et al., 2018, "Quantization
and Training of Neural Networks...", sec. 3.2): the same result with one pass over every
feature map fewer. Channels-last (NHWC) memory lets oneDNN's CPU convolutions skip their
layout reorders.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# torch's batch norms and (not transposed) convolutions by their public names; their bases
# (`_BatchNorm`, `_ConvNd`) are private. tests/inference/test_optimize.py checks that every
# batch norm torch.nn defines is here.
BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every conv -> batch norm pair folded.

    The user's model is left untouched. The copy keeps its class and interface
    (``forward_features``, ``feature_info``, ...): each folded convolution gains a bias and
    its batch norm becomes ``nn.Identity``, so batch-norm keys leave its ``state_dict``.
    Batch norms that do not directly follow a convolution (DenseNet's pre-activation
    ``norm1`` follows a concatenation) stay. Parameters stop requiring gradients: the copy
    is for inference only (batch statistics are frozen into the weights).

    Args:
        model: any convolutional network, e.g. from :func:`moderncnn.create_model` or
            torchvision.
        channels_last: store 4-D weights channels-last (NHWC); feed it
            ``x.contiguous(memory_format=torch.channels_last)`` for the full speed-up.
    """
    # Leave inference mode if the caller is in it, so that the copy holds ordinary tensors,
    # usable both inside and outside inference mode afterwards.
    with torch.inference_mode(False), torch.no_grad():
        fused = copy.deepcopy(model).eval()
        for module in fused.modules():
            # DenseNet's gradient checkpointing only saves training memory, and its
            # `requires_grad` test is data-dependent control flow that fx cannot trace.
            if isinstance(getattr(module, "memory_efficient", None), bool):
                module.memory_efficient = False
        for conv_name, bn_name in conv_bn_pairs(fused):
            _fold(fused.get_submodule(conv_name), fused.get_submodule(bn_name))
            _set_submodule(fused, bn_name, nn.Identity())
        fused.requires_grad_(False)
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
    return fused


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Dotted names ``(conv, batch_norm)`` of the pairs in ``model`` that can be folded.

    Which batch norm follows which convolution is a question about data flow, not about
    attribute names: ResNet's ``bn1`` follows ``conv1`` only because ``forward`` says so,
    while DenseNet's ``norm1`` sits beside a conv yet reads a concatenation. ``torch.fx``
    records that data flow symbolically, without running the model, so we trace in eval
    mode and read the pairs off the graph -- but fold them in the module tree itself, so the
    result is still a ``ResNet`` and not a ``GraphModule``. A module that fx cannot trace
    (data-dependent control flow) is traced child by child instead: pairs inside its
    children are still found; a pair across its boundary is skipped (slower, never wrong).
    """
    return _pairs_in(model, prefix="")


def _pairs_in(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    if not any(isinstance(m, BATCH_NORMS) for m in module.modules()):
        return []
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # fx raises many types (TraceError, TypeError...): look inside instead
        return [
            pair
            for name, child in module.named_children()
            for pair in _pairs_in(child, f"{prefix}{name}.")
        ]
    return [(prefix + conv, prefix + bn) for conv, bn in _pairs_in_graph(graph, module)]


def _pairs_in_graph(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str]]:
    """Pairs where the batch norm's input is a conv output that nothing else reads."""
    calls = [n for n in graph.nodes if n.op == "call_module"]
    times_called = Counter(n.target for n in calls)  # a module reused twice cannot be folded
    pairs = []
    for bn_node in calls:
        conv_node = bn_node.args[0] if bn_node.args else None
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"):
            continue
        conv, bn = root.get_submodule(conv_node.target), root.get_submodule(bn_node.target)
        if (
            _foldable(conv, bn)
            and len(conv_node.users) == 1
            and len(bn_node.args) == 1
            and not bn_node.kwargs
            and times_called[conv_node.target] == times_called[bn_node.target] == 1
        ):
            pairs.append((str(conv_node.target), str(bn_node.target)))
    return pairs


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, CONVOLUTIONS)
        and not conv.transposed
        and isinstance(bn, BATCH_NORMS)
        # without running statistics an eval-mode batch norm still normalises per batch
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``conv`` in place (``fuse_conv_bn_eval`` would copy the conv again)."""
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)
