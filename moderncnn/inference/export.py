"""Export a trained classifier to ONNX or TorchScript, checked against the eager model.

Every export is verified before it is kept: the exported file is loaded back (ONNX in an
onnxruntime CPU session, TorchScript with ``torch.jit.load``) and run on a seeded random
batch; if its logits differ from the eager model's by more than fp32 round-off, the file is
deleted and :class:`ExportError` raised. Beside ``model.onnx`` a sidecar ``model.onnx.json``
records what a predictor needs and the graph does not hold: class names, input size,
normalisation mean/std, and the measured difference; :func:`load_exported` reads both back.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): it needs nothing
beyond the ``export`` extra (the dynamo exporter needs onnxscript) and converts these static
CNNs completely. Batch norms are folded into the convolutions first, as in
:func:`moderncnn.inference.optimize_for_inference`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "ExportError",
    "ExportedModel",
    "export_model",
    "fp32_noise",
    "load_exported",
    "verify_export",
]

ExportFormat = Literal["onnx", "torchscript"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript"}
# Opset 17 (2022) is read by every current runtime (onnxruntime >= 1.14, TensorRT >= 8.6), and
# has every op these CNNs need (Conv, MaxPool with ceil_mode, GlobalAveragePool, Concat, Gemm).
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# fp32 round-off grows with depth and logit scale: allowed |diff| is ATOL * max(1, max |logit|).
ATOL = 1e-4
# ...or, if more, this many times the eager model's own fp32 error (against float64).
NOISE_FACTOR = 4.0
# What a predictor needs from the training data, looked up in a checkpoint's hyperparameters.
DATA_KEYS = ("class_names", "image_size", "mean", "std")


class ExportError(RuntimeError):
    """An exported model whose outputs do not match the eager model's."""


def sidecar_path(path: str | Path) -> Path:
    """The JSON file beside an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


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
) -> Path:
    """Write ``model`` (in eval mode) to ``out`` as ONNX or TorchScript, verified; return ``out``.

    Args:
        model: a classifier; in eval mode it must return one logits tensor (aux heads are off).
        out: the file to write; its sidecar is ``sidecar_path(out)``.
        format: ``"onnx"`` (opset :data:`ONNX_OPSET`) or ``"torchscript"`` (``torch.jit.trace``).
        input_size: C, H, W of the images; default ``model.input_size``. H and W are fixed.
        dynamic_batch: let the exported model take any batch size; it is then traced at batch
            2 and checked at batch 3 (else both at batch 1).
        class_names: one name per output; default ``class_0``, ``class_1``, ...
        optimize: fold batch norms into convolutions first (:mod:`moderncnn.inference`).
        mean: per-channel normalisation mean the model was trained with, for the sidecar.
        std: per-channel normalisation std, for the sidecar.
        model_name: registered name of the architecture, for the sidecar.
    """
    if format not in SUFFIXES:
        raise ValueError(f"format must be one of {list(SUFFIXES)}, got {format!r}")
    size = _input_size(model, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    # Trace at batch 2 so that no size-1 batch dimension is baked into the graph; check the
    # dynamic export at yet another batch size.
    example = torch.randn(2 if dynamic_batch else 1, *size, generator=gen)
    check = torch.randn(3 if dynamic_batch else 1, *size, generator=gen)
    expected = _eager(model, check)  # also fails early, and clearly, on an illegal input size
    n_out = expected.shape[1]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n_out)]
    if len(names) != n_out:
        raise ValueError(f"{len(names)} class names for {n_out} outputs; give one name per output")

    net = _inference_copy(model, optimize)
    with torch.no_grad():
        if format == "onnx":
            _export_onnx(net, example, out, dynamic_batch)
        else:
            _export_torchscript(net, example, out)
    diff = _max_abs_diff(_runner(out, format)(check), expected)
    limit = ATOL * max(1.0, expected.abs().max().item())
    if diff > limit:
        # A deep net (Inception v3) can lose more than that to fp32 round-off on its own, as a
        # float64 run shows: an export that close to its eager model is as good as eager.
        limit = max(limit, NOISE_FACTOR * fp32_noise(model, check, expected))
    if not diff <= limit:  # also refuses NaN
        out.unlink()
        sidecar_path(out).unlink(missing_ok=True)  # a stale one would describe a deleted file
        raise ExportError(
            f"the {format} export of {type(model).__name__} differs from the eager model by "
            f"{diff:.3g} (allowed {limit:.3g}) on a {tuple(check.shape)} input, so {out} was "
            "deleted; try optimize=False (--no-optimize), or report the model and input size"
        )
    meta = {
        "format": format,
        "model": model_name or type(model).__name__,
        "input_size": list(size),
        "dynamic_batch": dynamic_batch,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "opset": ONNX_OPSET if format == "onnx" else None,
        "class_names": names,
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "bn_folded": optimize,
        "max_abs_diff": diff,
        "torch_version": torch.__version__,
    }
    sidecar_path(out).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    size = tuple(input_size) if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no input_size; pass input_size=(C, H, W)")
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input_size must be three positive ints (C, H, W), got {size!r}")
    return size  # type: ignore[return-value]


def _inference_copy(model: nn.Module, optimize: bool) -> nn.Module:
    """An eval-mode copy (BN folded when ``optimize``), NCHW-contiguous: the user's is untouched."""
    if optimize:
        from moderncnn.inference import optimize_for_inference

        return optimize_for_inference(model, channels_last=False)
    return copy.deepcopy(model).eval().requires_grad_(False)


def _export_torchscript(net: nn.Module, example: Tensor, out: Path) -> None:
    with _quiet_deprecation():
        # check_trace=False: export_model's comparison is the stricter check of the same thing.
        torch.jit.trace(net, example, check_trace=False).save(str(out))


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Silence PyTorch's notices that TorchScript and its ONNX exporter are deprecated.

    The user chose the format, and TorchScript files still run without Python (libtorch).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _export_onnx(net: nn.Module, example: Tensor, out: Path, dynamic_batch: bool) -> None:
    import onnx

    batch = {0: "batch"}
    with _quiet_deprecation():
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
        raise ValueError(
            f"{type(model).__name__} cannot run on an input of size {tuple(x.shape)}: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(y, Tensor) or y.ndim != 2:
        raise ValueError(f"expected an N x classes logits tensor in eval mode, got {type(y)}")
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
    return _max_abs_diff(_runner(path, format or _format_of(path))(x), _eager(model, x))


def _format_of(path: Path) -> str:
    side = sidecar_path(path)
    if side.is_file():
        return json.loads(side.read_text())["format"]
    return "onnx" if path.suffix == ".onnx" else "torchscript"


def _runner(path: Path, format: str) -> Callable[[Tensor], Tensor]:
    """A function images -> logits (CPU tensors) running the exported file."""
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: Tensor) -> Tensor:
            images = x.detach().cpu().float().contiguous().numpy()
            return torch.from_numpy(session.run(None, {name: images})[0])

        return run_onnx
    with _quiet_deprecation():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run_torchscript(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x.cpu().float())

    return run_torchscript


@dataclass
class ExportedModel:
    """An exported classifier ready to predict: ``logits = exported(images)``."""

    path: Path
    class_names: list[str]
    run: Callable[[Tensor], Tensor] = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: Tensor) -> Tensor:
        """N x C x H x W normalised images -> N x classes logits (CPU float32)."""
        return self.run(images)


def load_exported(path: str | Path) -> ExportedModel:
    """Load an ONNX or TorchScript file written by :func:`export_model`, with its sidecar.

    Without a sidecar the class names are empty and the format follows the suffix.
    """
    path = Path(path)
    side = sidecar_path(path)
    meta = json.loads(side.read_text()) if side.is_file() else {}
    run = _runner(path, meta.get("format") or _format_of(path))
    return ExportedModel(path, list(meta.get("class_names") or []), run, meta)


# --- the `moderncnn export` command -----------------------------------------------------------


def _data_info(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Class names, mean/std and image size saved with a Lightning checkpoint, where known.

    ImageClassifier's ``class_names`` and ``preprocess`` hyperparameters win, then the
    datamodule's; a moderncnn datamodule's class attributes (CIFAR-10's names and statistics)
    fill in the rest.
    """
    module = checkpoint.get("hyper_parameters") or {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    known: dict[str, Any] = {}
    class_path = data.get("_class_path", "")  # LightningCLI records the datamodule class here
    if class_path.startswith("moderncnn.data."):  # import only our own package's classes
        module_name, _, cls_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name, None)
        stats = getattr(cls, "stats", None)
        known = {
            "class_names": getattr(cls, "class_names", None),
            "image_size": getattr(cls, "image_size", None),
            "mean": getattr(stats, "mean", None),
            "std": getattr(stats, "std", None),
        }
        # Only plain class attributes: a property (set per instance) reads as a descriptor.
        known = {k: v for k, v in known.items() if isinstance(v, list | tuple)}
    for source in (data, module.get("preprocess") or {}, module):
        known.update({k: source[k] for k in DATA_KEYS if source.get(k) is not None})
    return known


def load_checkpoint_model(
    path: str | Path,
    model_name: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Rebuild the network in a checkpoint: (model, its name, data info from the checkpoint).

    A Lightning ``.ckpt`` of :class:`moderncnn.ImageClassifier` rebuilds itself from its saved
    hyperparameters; a plain state dict (``.pth``/``.safetensors``) needs ``model_name`` and
    ``num_classes``. Files are read with ``weights_only=True``: no pickled code runs.
    """
    from moderncnn.io.checkpoint import read_checkpoint, read_state_dict, unwrap_state_dict
    from moderncnn.models import create_model

    path = Path(path)
    obj = None if path.suffix == ".safetensors" else read_checkpoint(path)
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    info: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if isinstance(hparams, dict) and model_name is None:
        if "model" not in hparams or "num_classes" not in hparams:
            raise ValueError(
                f"{path}: hyper_parameters lack 'model'/'num_classes' (found {sorted(hparams)}); "
                "pass --model NAME --num-classes N"
            )
        model_name, num_classes = hparams["model"], int(hparams["num_classes"])
        in_chans = int(hparams.get("in_chans", in_chans))
        kwargs = dict(hparams.get("model_kwargs") or {})
    if isinstance(obj, dict):
        info = _data_info(obj)
    if model_name is None or num_classes is None:
        raise ValueError(f"{path} is a plain state dict: pass --model NAME and --num-classes N")
    # The ImageClassifier keeps its network in `self.model`, hence the "model." key prefix.
    state = read_state_dict(path) if obj is None else unwrap_state_dict(obj, source=str(path))
    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path} does not fit {model_name}(num_classes={num_classes}, in_chans={in_chans}): "
            f"{str(err).splitlines()[-1].strip()}"
        ) from err
    return model.eval(), model_name, info


def main(argv: list[str] | None = None) -> int:
    """``moderncnn export CHECKPOINT --format onnx|torchscript [-o OUT] [--dynamic-batch]``."""
    parser = argparse.ArgumentParser(prog="moderncnn export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help=".ckpt from `moderncnn fit`, or a .pth/.safetensors")
    parser.add_argument("--format", required=True, choices=get_args(ExportFormat))
    parser.add_argument("-o", "--output", help="file to write (default: CHECKPOINT's name)")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size, not 1")
    parser.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    parser.add_argument("--model", help="model name, for a plain state dict")
    parser.add_argument("--num-classes", type=int, help="classifier width, for a state dict")
    parser.add_argument("--in-chans", type=int, default=3, help="image channels, for a state dict")
    parser.add_argument("--no-optimize", action="store_true", help="keep the batch norms")
    args = parser.parse_args(argv)
    try:
        model, name, info = load_checkpoint_model(
            args.checkpoint, args.model, args.num_classes, args.in_chans
        )
        size = args.input_size
        if size is None and info.get("image_size") is not None:  # the size it was trained at
            hw = info["image_size"]
            size = (model.input_size[0], *((hw, hw) if isinstance(hw, int) else hw))
        out = args.output or Path(args.checkpoint).with_suffix(SUFFIXES[args.format])
        out = export_model(
            model,
            out,
            args.format,
            input_size=None if size is None else tuple(size),
            dynamic_batch=args.dynamic_batch,
            class_names=info.get("class_names"),
            optimize=not args.no_optimize,
            mean=info.get("mean"),
            std=info.get("std"),
            model_name=name,
        )
    except (ValueError, FileNotFoundError, ExportError) as err:
        print(f"moderncnn export: error: {err}", file=sys.stderr)
        return 1
    diff = json.loads(sidecar_path(out).read_text())["max_abs_diff"]
    print(f"wrote {out} and {sidecar_path(out)} (max |logit diff| vs eager: {diff:.2e})")
    return 0
