"""int8: static post-training quantization of a verified ONNX export, kept only if accurate.

ONNX Runtime's ``quantize_static`` quantizes the weights per output channel (int8) and the
activations per tensor (uint8) with ranges measured on calibration images from the training
data; the file is in QDQ form, which ONNX Runtime and OpenVINO both run with int8 kernels.
Rounding to 256 levels changes logits by far more than fp32 round-off, so an int8 model is
checked by what matters, its top-1 accuracy on labelled validation images against the fp32
export's: both go into its card's ``metrics``, and a drop larger than ``max_drop`` points
(default 1) is refused unless forced.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moderncnn.io.atomic import atomic_replace, temporary_sibling
from moderncnn.io.card import ModelCard
from moderncnn.io.errors import ConfigError, DataError, ModernCNNError

from .runtimes import read_sidecar, run_exported, sidecar_path, update_sidecar

__all__ = [
    "DEFAULT_MAX_DROP",
    "QuantizationError",
    "accuracy",
    "check_max_drop",
    "datamodule_batches",
    "int8_path",
    "quantize_export",
    "quantize_onnx",
]

DEFAULT_MAX_DROP = 1.0  # accuracy points (percent of images) int8 may lose against fp32
CALIBRATION_IMAGES = 512  # training images whose activations set the int8 ranges


class QuantizationError(ModernCNNError, RuntimeError):
    """An int8 model that lost more accuracy than its budget allows."""


def int8_path(fp32_path: str | Path) -> Path:
    """Where the int8 model of ``model.onnx`` goes: ``model.int8.onnx``."""
    path = Path(fp32_path)
    return path.with_name(path.stem + ".int8.onnx")


def datamodule_batches(
    data: Any, split: str, seed: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """(normalised images, labels) batches of a data module's ``train``/``val``/``test`` split.

    moderncnn's tensor data modules normalise in their batch hooks (and augment only while a
    trainer is training, which this is not). ``seed`` fixes the order of a shuffled split, so
    that int8 calibration sees the same images every run, without touching the global RNG.
    """
    data.prepare_data()
    data.setup("test" if split == "test" else "fit")
    loader = getattr(data, f"{split}_dataloader")()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        # A shuffling sampler draws its order when the first batches are asked for.
        batches = iter(loader)
        first = next(batches, None)
    if first is None:
        return
    for batch in itertools.chain([first], batches):
        images, labels = data.on_after_batch_transfer(data.on_before_batch_transfer(batch, 0), 0)
        yield images.float(), labels.long()


def _sized(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``images`` at the export's fixed height and width (resized when the data differs)."""
    if tuple(images.shape[-2:]) == size:
        return images.contiguous()
    return F.interpolate(images, size=size, mode="bilinear", antialias=True)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over at most ``limit`` images."""

    def __init__(self, batches: Iterable[Tensor], name: str, size: tuple[int, int], limit: int):
        self.batches, self.name, self.size, self.left = iter(batches), name, size, limit

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.left <= 0:
            return None
        images = next(self.batches, None)
        if images is None:
            return None
        images = _sized(images[: self.left], self.size)
        self.left -= len(images)
        return {self.name: images.numpy().astype(np.float32)}


def quantize_onnx(
    fp32_path: Path, out: Path, calibration: Iterable[Tensor], limit: int = CALIBRATION_IMAGES
) -> Path:
    """Write ``out``: ``fp32_path`` (a dynamic-batch export) quantized on calibration images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = read_sidecar(sidecar_path(fp32_path))
    size = tuple(meta["input_size"][1:])
    reader = _Calibration(calibration, meta.get("input_name", "images"), size, limit)
    with temporary_sibling(out) as prepared:
        # Shape inference and graph fusions first, as ONNX Runtime recommends.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
    if reader.left == limit:
        raise DataError("no calibration images: the training split gave no batch")
    return out


def check_max_drop(max_drop: float) -> None:
    """Refuse a budget that is not a number of points: NaN would let every int8 model pass."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, int | float):
        raise ConfigError(f"max_drop must be a number of accuracy points, got {max_drop!r}")
    if not math.isfinite(max_drop):
        raise ConfigError(f"--max_drop must be a finite number of accuracy points, got {max_drop}")


def accuracy(
    run: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]], size: tuple[int, int]
) -> tuple[float, int]:
    """Top-1 accuracy of ``run`` (images -> logits) over labelled batches, and the image count."""
    correct = total = 0
    with torch.inference_mode():
        for images, labels in batches:
            predicted = run(_sized(images, size)).argmax(1)
            correct += int((predicted == labels).sum())
            total += len(labels)
    if not total:
        raise DataError("no validation images to measure the int8 accuracy on")
    return correct / total, total


def quantize_export(
    fp32_path: str | Path,
    out: str | Path,
    calibration: Iterable[Tensor],
    validation: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    *,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    split: str = "val",
    threads: int | None = None,
    runtime: str = "onnxruntime",
) -> ModelCard:
    """Quantize a verified fp32 ONNX export to ``out`` and record both accuracies in its card.

    Args:
        fp32_path: a dynamic-batch ONNX file from :func:`export_model`, with its sidecar.
        out: the int8 file to write (its sidecar beside it).
        calibration: normalised training images, in batches.
        validation: returns the labelled validation batches (called once per precision).
        max_drop: accuracy points int8 may lose; beyond, nothing is written (unless ``force``).
        force: write it all the same (its card records the drop).
        split: the name of the validation split, for the card.
        threads: intra-op threads of the accuracy runs.
        runtime: the runtime the accuracy is measured on.

    Returns the int8 model's card (its ``metrics`` hold ``fp32_<split>_acc``,
    ``int8_<split>_acc`` and ``int8_drop_points``).
    """
    fp32_path, out = Path(fp32_path), Path(out)
    check_max_drop(max_drop)
    meta = read_sidecar(sidecar_path(fp32_path))
    if not meta.get("dynamic_batch"):
        raise DataError(f"{fp32_path}: quantize a dynamic-batch export (--dynamic-batch)")
    size = tuple(meta["input_size"][1:])
    with atomic_replace(out) as tmp:
        quantize_onnx(fp32_path, tmp, calibration)
        fp32 = run_exported(fp32_path, "onnx", runtime, "fp32", threads)
        fp32_acc, images = accuracy(fp32, validation(), size)
        int8 = run_exported(tmp, "onnx", runtime, "int8", threads)
        int8_acc, _ = accuracy(int8, validation(), size)
        drop = 100 * (fp32_acc - int8_acc)
        if drop > max_drop and not force:
            raise QuantizationError(
                f"int8 {split} accuracy {int8_acc:.2%} is {drop:.2f} points below fp32's "
                f"{fp32_acc:.2%} on {images} images (budget {max_drop:g}); {out} was not written: "
                "allow more (--max_drop) or keep it anyway (--force)"
            )
        card = ModelCard.from_dict(meta["card"], str(sidecar_path(fp32_path)))
        card = card.replace(metrics={
            **card.metrics,
            f"fp32_{split}_acc": fp32_acc,
            f"int8_{split}_acc": int8_acc,
            "int8_drop_points": drop,
            "int8_eval_images": images,
        })  # fmt: skip
    shutil.copyfile(sidecar_path(fp32_path), sidecar_path(out))
    update_sidecar(
        out, precision="int8", card=card.to_dict(), fp32_file=fp32_path.name, max_drop=max_drop,
        max_abs_diff=None,
    )  # fmt: skip
    return card
