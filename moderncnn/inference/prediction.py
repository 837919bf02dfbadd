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
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moderncnn.data.files import DecodedImageFiles, ImageBatch, collate_images
from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.command_line import CommandParser
from moderncnn.io.errors import ConfigError
from moderncnn.io.safe_text import spreadsheet_safe

from .distributed import (
    PredictSettings,
    Shard,
    ShardWriter,
    add_trainer_arguments,
    is_rank_zero,
    plan_shards,
    run_sharded,
    trainer_settings,
)
from .loading import Prediction, expand_inputs, load_model
from .runtimes import PRECISIONS, RUNTIMES, THREADS_ENV
from .tta import check_tta

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
    trainer: PredictSettings | None = None,
    parts: str | Path | None = None,
    shard_size: int = 4096,
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
        trainer: processes to run on (devices, nodes, strategy, accelerator); default one, on
            ``device``. Several processes each classify every N-th shard of the files and
            write its rows to ``parts``; process 0 returns them all, in the files' order (the
            others return an empty list). They run the network in torch.
        parts: folder (on a disk every process sees) for the rows of each shard, with several
            processes; the shards already there are kept, so a stopped run resumes.
        shard_size: files per shard (with several processes).
    """
    trainer = trainer or PredictSettings()
    trainer.check()
    if trainer.processes > 1:
        if runtime not in ("auto", "torch"):
            raise ConfigError(
                f"runtime {runtime!r} runs in one process; with {trainer.processes} processes "
                "use runtime 'torch'"
            )
        if parts is None:
            raise ConfigError(
                f"predict on {trainer.processes} processes writes its rows to a folder: give "
                "parts=... (on the command line: --csv or --json)"
            )
        runtime = "torch"
    model = load_model(
        checkpoint, backbone=backbone, runtime=runtime, precision=precision, threads=threads
    )
    if trainer.processes == 1:
        return model.predict(
            inputs, topk=topk, batch_size=batch_size, transform=transform, device=device, tta=tta
        )
    job = _ShardedPredictions(model, expand_inputs(inputs), topk, check_tta(tta), Path(parts))
    shards = plan_shards({"all": len(job.files)}, shard_size)
    job.parts.mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not job.finished(s)]
    writer = ShardWriter(shards, job.save, lambda: job.finish(shards))
    dataset = DecodedImageFiles(job.files, [0] * len(job.files), transform or model.transform)
    run_sharded(
        trainer, torch.device(device), model.network, job.step, dataset, collate_images, todo,
        writer, batch_size=batch_size,
    )  # fmt: skip
    return job.result


class _ShardedPredictions:
    """The rows of each shard of files, written to ``parts``; process 0 joins them."""

    def __init__(self, model, files: list[Path], topk: int, tta: list[str], parts: Path) -> None:
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive int, got {topk!r}")
        self.model, self.files, self.tta, self.parts = model, files, tta, parts
        self.k = min(topk, len(model.class_names))
        self.result: list[Prediction] = []

    def _part(self, shard: Shard) -> Path:
        return self.parts / f"{shard.name}.json"

    def finished(self, shard: Shard) -> bool:
        try:
            rows = json.loads(self._part(shard).read_text())
        except (OSError, ValueError):
            return False
        return [r.get("file") for r in rows] == [
            str(f) for f in self.files[shard.start : shard.stop]
        ]

    def step(self, batch: ImageBatch, module: Any) -> dict[str, Any]:
        top = []
        if batch.images is not None:
            top = self.model.top_classes(batch.images.to(module.device), self.k, self.tta)
        return {"indices": batch.indices, "errors": batch.errors, "top": top}

    def save(self, shard: Shard, rows: dict[str, Any]) -> None:
        found = {
            index: Prediction(str(self.files[index]), names, probs)
            for index, (names, probs) in zip(rows["indices"].tolist(), rows["top"], strict=True)
        }
        found |= {index: Prediction(str(self.files[index]), error=e) for index, e in rows["errors"]}
        ordered = [asdict(found[i]) for i in sorted(found)]
        atomic_write_text(self._part(shard), json.dumps(ordered) + "\n")

    def finish(self, shards: list[Shard]) -> None:
        self.result = [
            Prediction(**row) for s in shards for row in json.loads(self._part(s).read_text())
        ]


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
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    trainer = trainer_settings(args)
    # Several processes write their rows beside the output, then process 0 joins them there.
    output = args.csv or args.json
    parts = Path(f"{output}.parts") if output and trainer.processes > 1 else None
    predictions = predict(
        args.files, args.checkpoint, topk=args.topk, batch_size=args.batch_size,
        device=args.device, runtime=args.runtime, precision=args.precision, threads=args.threads,
        tta=[view for view in args.tta.split(",") if view], trainer=trainer, parts=parts,
    )  # fmt: skip
    if not is_rank_zero():
        return 0  # the other processes of a multi-process run: process 0 reports
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
    if parts is not None:
        shutil.rmtree(parts)
    print(f"{len(predictions) - len(failed)} images classified, {len(failed)} unreadable")
    return 1 if failed and len(failed) == len(predictions) else 0
