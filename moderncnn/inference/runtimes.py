"""Run an exported model: ONNX files in ONNX Runtime, TorchScript files in ``torch.jit``.

Beside ``model.onnx`` its sidecar ``model.onnx.json`` holds what the graph does not: the model
card (class names, preprocessing, ...), input size and how it was checked against eager.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moderncnn.io.errors import DataError, MissingFileError

__all__ = ["ExportedModel", "load_exported", "quiet_deprecation", "run_exported", "sidecar_path"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def sidecar_path(path: str | Path) -> Path:
    """The JSON file beside an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Silence PyTorch's notices that TorchScript and its ONNX exporter are deprecated.

    The user chose the format, and TorchScript files still run without Python (libtorch).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def format_of(path: Path) -> str:
    side = sidecar_path(path)
    if side.is_file():
        return read_sidecar(side).get("format", "onnx" if path.suffix == ".onnx" else "torchscript")
    return "onnx" if path.suffix == ".onnx" else "torchscript"


def run_exported(path: Path, format: str) -> Callable[[Tensor], Tensor]:
    """A function images -> logits (CPU tensors) running the exported file."""
    if not path.is_file():
        raise MissingFileError(f"exported model {str(path)!r} does not exist")
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: Tensor) -> Tensor:
            images = x.detach().cpu().float().contiguous().numpy()
            return torch.from_numpy(session.run(None, {name: images})[0])

        return run_onnx
    with quiet_deprecation():
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
    meta = read_sidecar(side) if side.is_file() else {}
    run = run_exported(path, meta.get("format") or format_of(path))
    return ExportedModel(path, list(meta.get("class_names") or []), run, meta)


# --- the `moderncnn export` command -----------------------------------------------------------




def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of an exported model; a broken one is a one-line error naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable sidecar ({err}); export the model again") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: a sidecar is a JSON object, got {type(meta).__name__}")
    return meta

