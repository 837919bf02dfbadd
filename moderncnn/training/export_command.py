"""``moderncnn export --model MODEL --format onnx|torchscript|safetensors``: a verified export.

``--precision int8 --calibrate CONFIG`` also writes ``MODEL.int8.onnx``: the ONNX export statically
quantized with images of the config's training data, kept only if its accuracy on the
validation split is within ``--max_drop`` points of fp32's (both are stored in its card).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from moderncnn.inference.export import SUFFIXES, export_model
from moderncnn.inference.loading import LoadedModel, export_key, load_model, save_model
from moderncnn.inference.quantize import (
    DEFAULT_MAX_DROP,
    check_max_drop,
    datamodule_batches,
    int8_path,
    quantize_export,
)
from moderncnn.inference.runtimes import resolve_threads, sidecar_path, update_sidecar
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import ConfigError, DataError

from .config import datamodule_from_config

__all__ = ["export", "show_export"]


def export(
    model: str | Path,
    format: Literal["onnx", "torchscript", "safetensors"],
    *,
    out: str | Path | None = None,
    precision: Literal["fp32", "int8"] = "fp32",
    calibrate: str | None = None,
    dynamic_batch: bool = False,
    input_size: tuple[int, int, int] | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    optimize: bool = True,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    threads: int | None = None,
) -> list[Path]:
    """Export a trained model to ONNX, TorchScript or safetensors, checked against eager.

    Everything is checked before anything is written: a refused export leaves the files of
    earlier ones as they were. Returns the files (or folder) written.

    Args:
        model: the trained artifact: a .ckpt from moderncnn fit, a probe or saved-model
            folder, or a plain state dict (then give arch).
        format: onnx, torchscript or safetensors (a folder with config.json, loadable
            without moderncnn's classes).
        out: file (folder for safetensors) to write; default: beside the model.
        precision: fp32; int8 (onnx, with calibrate): also write OUT.int8.onnx, statically
            quantized and kept only if its accuracy is within max_drop points of fp32's.
        calibrate: training YAML: its train split calibrates int8, its val split measures
            the accuracy.
        dynamic_batch: any batch size, not 1.
        input_size: one input image (C, H, W); default: the model's.
        arch: the architecture (a registered model name), for a plain state dict.
        num_classes: classifier width, for a plain state dict.
        in_chans: image channels, for a plain state dict.
        optimize: fold the batch norms into the convolutions.
        max_drop: accuracy points int8 may lose against fp32.
        force: write the int8 model whatever its accuracy.
        threads: intra-op threads.
    """
    int8 = precision == "int8"
    if int8 and (format != "onnx" or not calibrate):
        raise ConfigError("precision int8 needs format onnx and calibrate CONFIG (a training YAML)")
    check_max_drop(max_drop)
    if threads is not None:
        resolve_threads(threads)
    loaded = load_model(model, architecture=arch, num_classes=num_classes, in_chans=in_chans)
    if loaded.network is None:
        raise ConfigError(f"{model} is already an exported model; export its checkpoint")
    source = Path(model)
    if format == "safetensors":
        folder = Path(out) if out else source.with_name(source.stem + "_saved")
        save_model(loaded, folder)
        return [folder]
    default = source / f"model{SUFFIXES[format]}" if source.is_dir() else None
    target = Path(out or default or source.with_suffix(SUFFIXES[format]))
    export = partial(
        export_model, loaded.network, format=format,
        input_size=None if input_size is None else tuple(input_size),
        dynamic_batch=dynamic_batch or int8, optimize=optimize, card=loaded.card,
    )  # fmt: skip
    if not int8:
        target = export(target)
        if format == "onnx":  # predict on the source runs this file, not a second export
            key = export_key(loaded.network, loaded.card)
            update_sidecar(target, export_key=key, onnx_sha256=sha256_file(target))
        return [target, sidecar_path(target)]
    if target.suffix.lower() != SUFFIXES[format]:  # as export_model says, before calibrating
        raise ConfigError(f"{target}: an onnx export is written to a file ending in .onnx")
    data = datamodule_from_config(calibrate)
    _check_calibration_data(data, loaded, calibrate)
    settings = {"max_drop": max_drop, "force": force, "threads": threads}
    _export_with_int8(loaded, target, export, data, settings)
    return [target, sidecar_path(target), int8_path(target), sidecar_path(int8_path(target))]


def show_export(written: list[Path], arguments: dict[str, Any]) -> int:
    """What ``moderncnn export`` prints: the files written, with their check against eager."""
    first = written[0]
    if arguments["format"] == "safetensors":
        print(f"wrote {first}/ (config.json, model.safetensors)")
        return 0
    diff = json.loads(sidecar_path(first).read_text())["max_abs_diff"]
    print(f"wrote {first} and {sidecar_path(first)} (max |logit diff| vs eager: {diff:.2e})")
    if len(written) > 2:
        m = json.loads(sidecar_path(written[2]).read_text()).get("card", {}).get("metrics", {})
        if m:
            print(
                f"wrote {written[2]}: int8 val accuracy {m['int8_val_acc']:.2%} vs fp32 "
                f"{m['fp32_val_acc']:.2%} ({m['int8_drop_points']:+.2f} points drop, "
                f"{m['int8_eval_images']} images)"
            )
        else:
            print(f"wrote {written[2]}")
    return 0


def _check_calibration_data(data: Any, loaded: LoadedModel, config: str) -> None:
    """Refuse, before anything is written, a config whose images the model cannot take."""
    for split in ("train", "val"):
        try:
            first = next(datamodule_batches(data, split), None)
        except (ValueError, TypeError) as err:  # the data module's own checks of its arguments
            raise DataError(f"--calibrate {config}: {err}") from err
        if first is None:
            raise DataError(f"--calibrate {config}: its {split} split has no images")
        images = first[0]
        if images.ndim != 4 or images.shape[1] != loaded.card.in_chans:
            raise DataError(
                f"--calibrate {config}: its {split} images are {tuple(images.shape[1:])} but "
                f"{loaded.path} takes {loaded.card.in_chans} channels; calibrate with the "
                "config the model was trained with"
            )


def _export_with_int8(
    loaded: LoadedModel, out: Path, export: Callable[[Path], Path], data: Any, settings: dict
) -> None:
    """Write the fp32 export and its int8 model, or neither: both are made in a temporary
    folder beside ``out`` and moved into place once the int8 model passed its accuracy check."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as folder:
        fp32 = export(Path(folder) / out.name)
        int8 = _write_int8(loaded, fp32, data, settings)
        for file in (fp32, sidecar_path(fp32), int8, sidecar_path(int8)):
            os.replace(file, out.parent / file.name)


def _write_int8(loaded: LoadedModel, fp32: Path, data: Any, settings: dict) -> Path:
    out = int8_path(fp32)
    # The same calibration images every run (seeded order): the same int8 model and accuracy.
    calibration = (images for images, _ in datamodule_batches(data, "train", seed=0))
    quantize_export(fp32, out, calibration, lambda: datamodule_batches(data, "val"), **settings)
    # load_model(CKPT, precision="int8") finds this file by the weights it was made from.
    update_sidecar(out, export_key=export_key(loaded.network, loaded.card))
    return out
