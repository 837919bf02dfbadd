"""``moderncnn predict --checkpoint MODEL FILES...``: top-k classes of image files.

``MODEL`` is anything :func:`~moderncnn.inference.loading.load_model` reads: a ``.ckpt`` from
``moderncnn fit``, a probe folder, a saved model folder, or an ``.onnx``/``.torchscript``
export. A file that cannot be decoded is reported with its reason; the other files are still
classified.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.command_line import CommandParser
from moderncnn.io.safe_text import spreadsheet_safe

from .loading import Prediction, load_model
from .runtimes import PRECISIONS, RUNTIMES, THREADS_ENV

__all__ = ["Prediction", "main", "predict", "spreadsheet_safe", "write_csv", "write_json"]


def predict(
    inputs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 32,
    backbone: nn.Module | None = None,
    transform: Callable[[Any], Tensor] | None = None,
    device: str | torch.device = "cpu",
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    tta: Sequence[str] | None = None,
) -> list[Prediction]:
    """Top-k classes and probabilities of image files (folders are searched for images).

    Args:
        inputs: image files and/or folders.
        checkpoint: any model :func:`~moderncnn.inference.loading.load_model` reads.
        topk: classes reported per image (at most the number of classes).
        batch_size: images per forward pass.
        backbone: for a probe whose backbone is not a registered model (or not rebuildable).
        transform: PIL image -> tensor; default: the preprocessing in the model's card.
        device: where the network runs.
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``
            (:mod:`~moderncnn.inference.runtimes`).
        precision: ``fp32``, ``bf16`` or ``int8``.
        threads: intra-op threads (default $MODERNCNN_THREADS, else the usable cores).
        tta: test-time augmentation views (``["hflip"]``, ``["hflip", "shift"]``): the mean
            probabilities over each image and its views.
    """
    model = load_model(
        checkpoint, backbone=backbone, runtime=runtime, precision=precision, threads=threads
    )
    return model.predict(
        inputs, topk=topk, batch_size=batch_size, transform=transform, device=device, tta=tta
    )


def write_csv(predictions: list[Prediction], path: str | Path) -> None:
    """One row per file and rank: file, rank, class, probability, error."""
    rows = [["file", "rank", "class", "probability", "error"]]
    for p in predictions:
        file = spreadsheet_safe(p.file)
        if p.error is not None:
            rows.append([file, "", "", "", spreadsheet_safe(p.error)])
        for rank, (name, prob) in enumerate(zip(p.classes, p.probabilities, strict=True), 1):
            rows.append([file, rank, spreadsheet_safe(name), f"{prob:.6f}", ""])
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_json(predictions: list[Prediction], path: str | Path) -> None:
    atomic_write_text(path, json.dumps([asdict(p) for p in predictions], indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``moderncnn predict --checkpoint MODEL FILES... [--topk K] [--csv] [--json]``."""
    parser = CommandParser(prog="moderncnn predict", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="image files or folders")
    parser.add_argument(
        "--checkpoint", required=True, help=".ckpt, probe or saved folder, or .onnx/.torchscript"
    )
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--csv", default=None, help="write the predictions to this CSV file")
    parser.add_argument("--json", default=None, help="write the predictions to this JSON file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--runtime", default="auto", choices=RUNTIMES,
        help="auto: on a CPU ONNX Runtime or OpenVINO if installed, on CUDA torch",
    )  # fmt: skip
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument(
        "--threads", type=int, default=None, help=f"intra-op threads (default ${THREADS_ENV})"
    )
    parser.add_argument(
        "--tta", default="", metavar="VIEWS",
        help="test-time augmentation: hflip, shift or hflip,shift (mean over the views)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    predictions = predict(
        args.files, args.checkpoint, topk=args.topk, batch_size=args.batch_size,
        device=args.device, runtime=args.runtime, precision=args.precision, threads=args.threads,
        tta=[view for view in args.tta.split(",") if view],
    )  # fmt: skip
    failed = [p for p in predictions if p.error is not None]
    for p in predictions:
        if p.error is None:
            ranked = ", ".join(
                f"{c} {q:.1%}" for c, q in zip(p.classes, p.probabilities, strict=True)
            )
            print(f"{p.file}: {ranked}")
    for p in failed:
        print(f"could not read {p.error}", file=sys.stderr)
    if args.csv:
        write_csv(predictions, args.csv)
    if args.json:
        write_json(predictions, args.json)
    print(f"{len(predictions) - len(failed)} images classified, {len(failed)} unreadable")
    return 1 if failed and len(failed) == len(predictions) else 0
