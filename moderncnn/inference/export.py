"""Export a trained classifier to ONNX, TorchScript or a safetensors folder, checked against eager.

Every export is verified before it is kept: the exported file is loaded back (ONNX in an
onnxruntime CPU session, TorchScript with ``torch.jit.load``) and run on a seeded random
batch; if its logits differ from the eager model's by more than fp32 round-off, nothing is
kept and :class:`ExportError` is raised. Files are written under temporary names beside their
destination and renamed into place only once verified, so a failed export leaves an earlier
good ``out.onnx`` and its sidecar as they were. Beside ``model.onnx`` the sidecar
``model.onnx.json`` holds the model card (class names, preprocessing, ...) and how the export
was checked; :func:`moderncnn.load_model` reads both back.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): it needs nothing
beyond the ``export`` extra (the dynamo exporter needs onnxscript) and converts these static
CNNs completely. Batch norms are folded into the convolutions first, as in
:func:`moderncnn.inference.optimize_for_inference`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from moderncnn.io.atomic import atomic_replace, atomic_write_text
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ConfigError, DataError, ModernCNNError

from .optimize import optimize_for_inference
from .runtimes import (
    INPUT_NAME,
    OUTPUT_NAME,
    format_of,
    quiet_deprecation,
    run_exported,
    sidecar_path,
)

__all__ = ["ExportError", "export_model", "fp32_noise", "verify_export"]

ExportFormat = Literal["onnx", "torchscript"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript"}
# Opset 17 (2022) is read by every current runtime (onnxruntime >= 1.14, TensorRT >= 8.6), and
# has every op these CNNs need (Conv, MaxPool with ceil_mode, GlobalAveragePool, Concat, Gemm).
ONNX_OPSET = 17
# fp32 round-off grows with depth and logit scale: allowed |diff| is ATOL * max(1, max |logit|).
ATOL = 1e-4
# ...or, if more, this many times the eager model's own fp32 error (against float64).
NOISE_FACTOR = 4.0


class ExportError(ModernCNNError, RuntimeError):
    """An exported model whose outputs do not match the eager model's."""


def export_model(
    model: nn.Module,
    out: str | Path,
    format: ExportFormat,
    input_size: tuple[int, int, int] | None = None,
    dynamic_batch: bool = False,
    class_names: Sequence[str] | None = None,
    optimize: bool = True,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model_name: str | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` (in eval mode) to ``out`` as ONNX or TorchScript, verified; return ``out``.

    Args:
        model: a classifier; in eval mode it must return one logits tensor (aux heads are off).
        out: the file to write; its sidecar is ``sidecar_path(out)``.
        format: ``"onnx"`` (opset :data:`ONNX_OPSET`) or ``"torchscript"`` (``torch.jit.trace``).
        input_size: C, H, W of the images; default the card's preprocessing size, else
            ``model.input_size``. H and W are fixed.
        dynamic_batch: let the exported model take any batch size; it is then traced at batch
            2 and checked at batch 3 (else both at batch 1).
        class_names: one name per output; default the card's, else ``class_0``, ``class_1``, ...
        optimize: fold batch norms into convolutions first (:mod:`moderncnn.inference`).
        mean: per-channel normalisation mean the model was trained with (without a card).
        std: per-channel normalisation std (without a card).
        model_name: registered name of the architecture (without a card).
        card: the model's card (``load_model(path).card``), written into the sidecar.
    """
    if format not in SUFFIXES:
        raise ConfigError(f"format must be one of {list(SUFFIXES)}, got {format!r}")
    if Path(out).suffix.lower() != SUFFIXES[format]:
        # The extension is what tells a reader the file's kind (TorchScript is code and loads
        # only from a file named so), and it keeps an export from replacing a checkpoint.
        raise ConfigError(
            f"{out}: a {format} export is written to a file ending in {SUFFIXES[format]}, "
            f"not {Path(out).suffix or 'no extension'!r}"
        )
    if input_size is None and card is not None and card.preprocess is not None:
        side = card.preprocess.image_size
        input_size = (card.in_chans, side, side)
    size = _input_size(model, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    # Trace at batch 2 so that no size-1 batch dimension is baked into the graph; check the
    # dynamic export at yet another batch size.
    example = torch.randn(2 if dynamic_batch else 1, *size, generator=gen)
    check = torch.randn(3 if dynamic_batch else 1, *size, generator=gen)
    expected = _eager(model, check)  # also fails early, and clearly, on an illegal input size
    card = _card_for(card, model, expected.shape[1], size, class_names, mean, std, model_name)

    net = _inference_copy(model, optimize)
    with atomic_replace(out) as tmp:
        with torch.no_grad():
            if format == "onnx":
                _export_onnx(net, example, tmp, dynamic_batch)
            else:
                _export_torchscript(net, example, tmp)
        diff = _max_abs_diff(run_exported(tmp, format)(check), expected)
        limit = ATOL * max(1.0, expected.abs().max().item())
        if diff > limit:
            # A deep net (Inception v3) can lose more than that to fp32 round-off on its own, as
            # a float64 run shows: an export that close to its eager model is as good as eager.
            limit = max(limit, NOISE_FACTOR * fp32_noise(model, check, expected))
        if not diff <= limit:  # also refuses NaN
            raise ExportError(
                f"the {format} export of {type(model).__name__} differs from the eager model by "
                f"{diff:.3g} (allowed {limit:.3g}) on a {tuple(check.shape)} input, so it was not "
                f"written to {out}; try optimize=False (--no-optimize), or report the model and "
                "input size"
            )
        meta = {
            "format": format,
            "model": card.architecture,
            "input_size": list(size),
            "dynamic_batch": dynamic_batch,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "opset": ONNX_OPSET if format == "onnx" else None,
            "class_names": card.names(),
            "bn_folded": optimize,
            "max_abs_diff": diff,
            "torch_version": torch.__version__,
            "card": card.to_dict(),
        }
    atomic_write_text(sidecar_path(out), json.dumps(meta, indent=1) + "\n")
    return out


def _card_for(
    card: ModelCard | None,
    model: nn.Module,
    outputs: int,
    size: tuple[int, int, int],
    class_names: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    model_name: str | None,
) -> ModelCard:
    """The card of the export: the given one, else one made of the loose arguments."""
    if card is None:
        pre = None if mean is None or std is None else Preprocess.for_size(size[-1], mean, std)
        card = ModelCard(
            architecture=model_name or f"{type(model).__module__}.{type(model).__qualname__}",
            num_classes=outputs,
            in_chans=size[0],
            class_names=None if class_names is None else tuple(class_names),
            preprocess=pre,
        )
    elif class_names is not None:
        card = card.replace(class_names=tuple(class_names))
    if card.class_names is not None and len(card.class_names) != outputs:
        raise ConfigError(
            f"{len(card.class_names)} class names for {outputs} outputs; give one name per output"
        )
    return card.replace(source={**card.source, "artifact": "export"})


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    size = tuple(input_size) if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no input_size; pass input_size=(C, H, W)")
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"input_size must be three positive ints (C, H, W), got {size!r}")
    return size  # type: ignore[return-value]


def _inference_copy(model: nn.Module, optimize: bool) -> nn.Module:
    """An eval-mode copy (BN folded when ``optimize``), NCHW-contiguous: the user's is untouched."""
    if optimize:
        return optimize_for_inference(model, channels_last=False)
    return copy.deepcopy(model).eval().requires_grad_(False)


def _export_torchscript(net: nn.Module, example: Tensor, out: Path) -> None:
    with quiet_deprecation():
        # check_trace=False: export_model's comparison is the stricter check of the same thing.
        torch.jit.trace(net, example, check_trace=False).save(str(out))


def _export_onnx(net: nn.Module, example: Tensor, out: Path, dynamic_batch: bool) -> None:
    import onnx

    batch = {0: "batch"}
    with quiet_deprecation():
        torch.onnx.export(
            net,
            (example,),
            str(out),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: batch, OUTPUT_NAME: batch} if dynamic_batch else None,
        )
    onnx.checker.check_model(str(out))


def _eager(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in eval mode, leaving the model in the mode it was in."""
    was_training = model.training
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except RuntimeError as err:
        raise ConfigError(
            f"{type(model).__name__} cannot run on an input of size {tuple(x.shape)}: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(y, Tensor) or y.ndim != 2:
        raise DataError(f"expected an N x classes logits tensor in eval mode, got {type(y)}")
    return y


def fp32_noise(model: nn.Module, x: Tensor, expected: Tensor | None = None) -> float:
    """Max |fp32 - fp64| of the eager model's logits on ``x``: its own round-off error."""
    if expected is None:
        expected = _eager(model, x)
    reference = _eager(copy.deepcopy(model).double(), x.double())
    return (expected.double() - reference).abs().max().item()


def _max_abs_diff(actual: Tensor, expected: Tensor) -> float:
    if actual.shape != expected.shape:
        raise ExportError(f"exported output shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    return (actual.float() - expected.float()).abs().max().item()


def verify_export(
    path: str | Path, model: nn.Module, x: Tensor, format: ExportFormat | None = None
) -> float:
    """Max absolute difference between the exported model's and the eager model's logits on ``x``.

    ``format`` defaults to the sidecar's, else ``.onnx`` files are ONNX and others TorchScript.
    """
    path = Path(path)
    return _max_abs_diff(run_exported(path, format or format_of(path))(x), _eager(model, x))
