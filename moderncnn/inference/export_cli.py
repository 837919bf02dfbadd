"""``moderncnn export MODEL --format onnx|torchscript|safetensors``: a verified export.

``--int8 --calibrate CONFIG`` also writes ``MODEL.int8.onnx``: the ONNX export statically
quantized with images of the config's training data, kept only if its accuracy on the
validation split is within ``--max-drop`` points of fp32's (both are stored in its card).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, get_args

from moderncnn.io.card import ModelCard
from moderncnn.io.command_line import CommandParser
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import ConfigError, DataError

from .export import SUFFIXES, ExportFormat, export_model
from .loading import LoadedModel, export_key, load_model, save_model
from .quantize import (
    DEFAULT_MAX_DROP,
    check_max_drop,
    datamodule_batches,
    int8_path,
    quantize_export,
)
from .runtimes import resolve_threads, sidecar_path, update_sidecar

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="moderncnn export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", help=".ckpt from `moderncnn fit`, a probe or saved-model folder, or a state dict"
    )
    parser.add_argument("--format", required=True, choices=[*get_args(ExportFormat), "safetensors"])
    parser.add_argument("-o", "--output", help="file (folder for safetensors) to write")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size, not 1")
    parser.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    parser.add_argument("--model", dest="architecture", help="model name, for a plain state dict")
    parser.add_argument("--num-classes", type=int, help="classifier width, for a state dict")
    parser.add_argument("--in-chans", type=int, default=3, help="image channels, for a state dict")
    parser.add_argument("--no-optimize", action="store_true", help="keep the batch norms")
    parser.add_argument("--int8", action="store_true", help="also write the int8 model (ONNX)")
    parser.add_argument(
        "--calibrate", metavar="CONFIG", help="training YAML: its train split calibrates int8, "
        "its val split measures the accuracy"
    )  # fmt: skip
    parser.add_argument(
        "--max-drop", type=float, default=DEFAULT_MAX_DROP,
        help=f"accuracy points int8 may lose against fp32 (default {DEFAULT_MAX_DROP:g})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="write int8 whatever its accuracy")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    return parser


def main(argv: list[str] | None = None, read_config: Callable[[str], Any] | None = None) -> int:
    """The command; ``read_config`` turns ``--calibrate CONFIG`` into its data module.

    Everything is checked before anything is written: a refused export leaves the files of
    earlier ones as they were.
    """
    args = _parser().parse_args(argv)
    if args.int8 and (args.format != "onnx" or not args.calibrate):
        raise ConfigError("--int8 needs --format onnx and --calibrate CONFIG (a training YAML)")
    if args.calibrate and read_config is None:
        raise ConfigError("--calibrate is read by the `moderncnn export` command")
    check_max_drop(args.max_drop)
    if args.threads is not None:
        resolve_threads(args.threads)
    loaded = load_model(
        args.model,
        architecture=args.architecture,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
    )
    if loaded.network is None:
        raise ConfigError(f"{args.model} is already an exported model; export its checkpoint")
    source = Path(args.model)
    if args.format == "safetensors":
        out = Path(args.output) if args.output else source.with_name(source.stem + "_saved")
        save_model(loaded, out)
        print(f"wrote {out}/ (config.json, model.safetensors)")
        return 0
    default = source / f"model{SUFFIXES[args.format]}" if source.is_dir() else None
    out = Path(args.output or default or source.with_suffix(SUFFIXES[args.format]))
    export = partial(
        export_model,
        loaded.network,
        format=args.format,
        input_size=None if args.input_size is None else tuple(args.input_size),
        dynamic_batch=args.dynamic_batch or args.int8,
        optimize=not args.no_optimize,
        card=loaded.card,
    )
    if not args.int8:
        out = export(out)
        if args.format == "onnx":  # predict on the source runs this file, not a second export
            key = export_key(loaded.network, loaded.card)
            update_sidecar(out, export_key=key, onnx_sha256=sha256_file(out))
        diff = json.loads(sidecar_path(out).read_text())["max_abs_diff"]
        print(f"wrote {out} and {sidecar_path(out)} (max |logit diff| vs eager: {diff:.2e})")
        return 0
    if out.suffix.lower() != SUFFIXES[args.format]:  # as export_model says, before calibrating
        raise ConfigError(f"{out}: an onnx export is written to a file ending in .onnx")
    data = read_config(args.calibrate)  # type: ignore[misc]
    _check_calibration_data(data, loaded, args.calibrate)
    _export_with_int8(loaded, out, export, data, args)
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
    loaded: LoadedModel, out: Path, export: Callable[[Path], Path], data: Any, args: Any
) -> None:
    """Write the fp32 export and its int8 model, or neither: both are made in a temporary
    folder beside ``out`` and moved into place once the int8 model passed its accuracy check."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as folder:
        fp32 = export(Path(folder) / out.name)
        int8, card = _write_int8(loaded, fp32, data, args)
        diff = json.loads(sidecar_path(fp32).read_text())["max_abs_diff"]
        for file in (fp32, sidecar_path(fp32), int8, sidecar_path(int8)):
            os.replace(file, out.parent / file.name)
    print(f"wrote {out} and {sidecar_path(out)} (max |logit diff| vs eager: {diff:.2e})")
    m = card.metrics
    print(
        f"wrote {int8_path(out)}: int8 val accuracy {m['int8_val_acc']:.2%} vs fp32 "
        f"{m['fp32_val_acc']:.2%} ({m['int8_drop_points']:+.2f} points drop, "
        f"{m['int8_eval_images']} images)"
    )


def _write_int8(
    loaded: LoadedModel, fp32: Path, data: Any, args: argparse.Namespace
) -> tuple[Path, ModelCard]:
    out = int8_path(fp32)
    # The same calibration images every run (seeded order): the same int8 model and accuracy.
    calibration = (images for images, _ in datamodule_batches(data, "train", seed=0))
    card = quantize_export(
        fp32, out, calibration, lambda: datamodule_batches(data, "val"),
        max_drop=args.max_drop, force=args.force, threads=args.threads,
    )  # fmt: skip
    # load_model(CKPT, precision="int8") finds this file by the weights it was made from.
    update_sidecar(out, export_key=export_key(loaded.network, loaded.card))
    return out, card
