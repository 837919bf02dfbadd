"""``moderncnn predict --model MODEL FILES...``: top-k classes of image files.

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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from moderncnn.data.files import DecodedImageFiles, ImageBatch, collate_images
from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.errors import ConfigError
from moderncnn.io.safe_text import spreadsheet_safe

from .distributed import (
    ONE_PROCESS,
    PredictSettings,
    Shard,
    ShardWriter,
    is_rank_zero,
    plan_shards,
    run_sharded,
)
from .loading import Prediction, expand_inputs, load_model
from .tta import check_tta

__all__ = [
    "Prediction", "predict", "show_predictions", "spreadsheet_safe", "write_csv", "write_json"
]  # fmt: skip


def predict(
    inputs: str | Path | Sequence[str | Path],
    model: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 32,
    out: str | Path | Sequence[str | Path] | None = None,
    backbone: nn.Module | None = None,
    transform: Callable[[Any], Tensor] | None = None,
    device: str = "auto",
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto",
    precision: Literal["fp32", "bf16", "int8"] = "fp32",
    threads: int | None = None,
    tta: Sequence[str] | None = None,
    trainer: PredictSettings = ONE_PROCESS,
    parts: str | Path | None = None,
    shard_size: int = 4096,
) -> list[Prediction]:
    """Top-k classes and probabilities of image files (folders are searched for images).

    On the command line, ``moderncnn predict --model ARTIFACT FILES...``; ``moderncnn predict
    -c CONFIG`` (a training config, without ``--model``) runs Lightning's predict instead.

    Args:
        inputs: image files and/or folders.
        model: the trained artifact: a .ckpt, probe or saved-model folder, .onnx, .torchscript,
            .safetensors or hf_hub:ID (anything load_model reads).
        topk: classes reported per image (at most the number of classes).
        batch_size: images per forward pass.
        out: also write the predictions to this file (or these files): .csv (a row per file
            and rank) or .json.
        backbone: for a probe whose backbone is not a registered model (or not rebuildable).
        transform: PIL image -> tensor; default: the preprocessing in the model's card.
        device: where the network runs; auto: CUDA if available, else the CPU.
        runtime: auto (on a CPU ONNX Runtime or OpenVINO if installed, on CUDA torch), torch,
            onnxruntime or openvino.
        precision: fp32, bf16 or int8.
        threads: intra-op threads (default $MODERNCNN_THREADS, else the usable cores).
        tta: test-time augmentation views (hflip, shift, or both: hflip,shift): the mean
            probabilities over each image and its views.
        trainer: processes to run on (devices, nodes, strategy, accelerator); default one, on
            ``device``. Several processes each classify every N-th shard of the files and
            write its rows to ``parts``; process 0 returns them all, in the files' order (the
            others return an empty list). They run the network in torch.
        parts: folder (on a disk every process sees) for the rows of each shard, with several
            processes (default OUT.parts); the shards already there are kept, so a stopped
            run resumes.
        shard_size: files per shard (with several processes).
    """
    outs = _output_files(out)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tta = _tta_views(tta)
    trainer = trainer or PredictSettings()
    joined = parts is None and bool(outs) and trainer.processes > 1
    parts = Path(f"{outs[0]}.parts") if joined else parts
    predictions = _predict(
        inputs, model, topk=topk, batch_size=batch_size, backbone=backbone, transform=transform,
        device=device, runtime=runtime, precision=precision, threads=threads, tta=tta,
        trainer=trainer, parts=parts, shard_size=shard_size,
    )  # fmt: skip
    if outs and is_rank_zero():
        _write_outputs(predictions, outs)
        if joined:
            shutil.rmtree(parts)
    return predictions


def _output_files(out: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """The files to write, each a .csv or .json (a ConfigError naming another)."""
    outs = [] if out is None else [out] if isinstance(out, str | Path) else list(out)
    for file in outs:
        if Path(file).suffix.lower() not in (".csv", ".json"):
            raise ConfigError(f"out {str(file)!r}: give a file ending in .csv or .json")
    return outs


def _tta_views(tta: Sequence[str] | None) -> Sequence[str] | None:
    """The views, "hflip,shift" (a command line's spelling) split at the commas."""
    if tta is None or isinstance(tta, str):
        return tta
    return [view for item in tta for view in str(item).split(",") if view]


def _write_outputs(predictions: list[Prediction], outs: list[str | Path]) -> None:
    for file in outs:
        write = write_json if Path(file).suffix.lower() == ".json" else write_csv
        write(predictions, file)


def _predict(
    inputs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    *,
    topk: int,
    batch_size: int,
    backbone: nn.Module | None,
    transform: Callable[[Any], Tensor] | None,
    device: str | torch.device,
    runtime: str,
    precision: str,
    threads: int | None,
    tta: Sequence[str] | None,
    trainer: PredictSettings,
    parts: str | Path | None,
    shard_size: int,
) -> list[Prediction]:
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
                "parts=... (on the command line: --out FILE.csv or FILE.json)"
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


def show_predictions(predictions: list[Prediction], arguments: dict[str, Any]) -> int:
    """What ``moderncnn predict`` prints: each file's classes; status 1 if none could be read."""
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
    print(f"{len(predictions) - len(failed)} images classified, {len(failed)} unreadable")
    return 1 if failed and len(failed) == len(predictions) else 0
