"""``moderncnn export MODEL --format onnx|torchscript|safetensors``: a verified export.

``--int8 --calibrate CONFIG`` also writes ``MODEL.int8.onnx``: the ONNX export statically
quantized with images of the config's training data, kept only if its accuracy on the
validation split is within ``--max-drop`` points of fp32's (both are stored in its card).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from moderncnn.io.errors import ConfigError

from .export import SUFFIXES, ExportFormat, export_model
from .loading import LoadedModel, export_key, load_model, save_model
from .quantize import DEFAULT_MAX_DROP, datamodule_batches, int8_path, quantize_export
from .runtimes import sidecar_path, update_sidecar

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moderncnn export", description=__doc__.splitlines()[0])
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
    """The command; ``read_config`` turns ``--calibrate CONFIG`` into its data module."""
    args = _parser().parse_args(argv)
    if args.int8 and (args.format != "onnx" or not args.calibrate):
        raise ConfigError("--int8 needs --format onnx and --calibrate CONFIG (a training YAML)")
    if args.calibrate and read_config is None:
        raise ConfigError("--calibrate is read by the `moderncnn export` command")
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
    out = export_model(
        loaded.network,
        args.output or default or source.with_suffix(SUFFIXES[args.format]),
        args.format,
        input_size=None if args.input_size is None else tuple(args.input_size),
        dynamic_batch=args.dynamic_batch or args.int8,
        optimize=not args.no_optimize,
        card=loaded.card,
    )
    diff = json.loads(sidecar_path(out).read_text())["max_abs_diff"]
    print(f"wrote {out} and {sidecar_path(out)} (max |logit diff| vs eager: {diff:.2e})")
    if args.int8:
        _write_int8(loaded, out, read_config(args.calibrate), args)
    return 0


def _write_int8(loaded: LoadedModel, fp32: Path, data: Any, args: argparse.Namespace) -> None:
    out = int8_path(fp32)
    calibration = (images for images, _ in datamodule_batches(data, "train"))
    card = quantize_export(
        fp32, out, calibration, lambda: datamodule_batches(data, "val"),
        max_drop=args.max_drop, force=args.force, threads=args.threads,
    )  # fmt: skip
    # load_model(CKPT, precision="int8") finds this file by the weights it was made from.
    update_sidecar(out, export_key=export_key(loaded.network, loaded.card))
    m = card.metrics
    print(
        f"wrote {out}: int8 val accuracy {m['int8_val_acc']:.2%} vs fp32 {m['fp32_val_acc']:.2%} "
        f"({m['int8_drop_points']:+.2f} points drop, {m['int8_eval_images']} images)"
    )
