"""Classify image files with a trained classifier or a backbone + linear-probe head.

``checkpoint`` is either a Lightning checkpoint of :class:`moderncnn.ImageClassifier`
(``.ckpt``; read with ``weights_only=True`` and rebuilt from its saved hyperparameters), an
exported ``.onnx`` or ``.torchscript`` file from ``moderncnn export`` (class names and
normalisation read from its JSON sidecar), or a probe folder written by ``moderncnn probe``
(the backbone is rebuilt from its name and weights and checked against the hash recorded when
the features were extracted). A file that cannot be decoded is reported with its reason; the
other files are still classified.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from moderncnn.io.cli_errors import user_errors_as_messages

from .sources import ImageFileDataset, Preprocess, collate_images, find_images

__all__ = ["Prediction", "load_predictor", "main", "predict", "write_csv", "write_json"]

# Files written by `moderncnn export` (moderncnn.inference.export.SUFFIXES).
EXPORTED_SUFFIXES = (".onnx", ".torchscript")


@dataclass
class Prediction:
    """The top-k classes of one file, or why it could not be read."""

    file: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Predictor:
    """Images (a normalised batch) -> logits, with the class names and the image transform."""

    logits: Callable[[Tensor], Tensor]
    class_names: list[str]
    transform: Callable[[Any], Tensor]


def _expand(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as the image files below them."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = find_images(item)
            if not found:
                raise FileNotFoundError(f"no image files in folder {item}")
            files += found
        else:
            files.append(item)  # a missing or broken file is reported with the predictions
    return files


def _probe_predictor(folder: Path, backbone: nn.Module | None, transform: Any) -> Predictor:
    from .features import build_backbone, feature_fn, weights_sha256
    from .probe import load_probe

    head, info = load_probe(folder)
    meta = info["backbone"]
    preprocess = (
        None if meta.get("preprocess") is None else Preprocess.from_dict(meta["preprocess"])
    )
    if transform is None:
        if preprocess is None:
            raise ValueError(
                f"{folder}: the features were made with a custom transform ({meta['transform']}); "
                "pass the same transform to predict()"
            )
        transform = preprocess.transform()
    if backbone is None:
        from moderncnn.models import is_model

        if not is_model(meta["backbone"]):
            raise ValueError(
                f"{folder}: the backbone {meta['backbone']!r} is not a registered model; pass it "
                "as predict(..., backbone=module)"
            )
        in_chans = len(preprocess.mean) if preprocess else 3
        backbone = build_backbone(meta["backbone"], meta["weights"], in_chans)
        if weights_sha256(backbone) != meta["weights_sha256"]:
            how = "random (weights=None)" if meta["weights"] is None else f"{meta['weights']!r}"
            raise ValueError(
                f"{folder}: the backbone rebuilt from {meta['backbone']} with weights {how} is "
                "not the one the probe's features came from; extract features with a weights "
                "file, or pass the original module as predict(..., backbone=module)"
            )
    features = feature_fn(backbone.eval(), meta.get("stage"))
    return Predictor(lambda x: head(features(x)), info["class_names"], transform)


def _classifier_predictor(path: Path, transform: Any) -> Predictor:
    """An ImageClassifier rebuilt from its checkpoint's hyperparameters (no pickled code run)."""
    from moderncnn.io.checkpoint import read_checkpoint
    from moderncnn.training.module import ImageClassifier

    # Lightning's load_from_checkpoint would torch.load the file in full; this reads tensors
    # and plain containers only, then rebuilds the module from the saved __init__ arguments.
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint of an ImageClassifier")
    if not isinstance(hparams.get("model"), str):
        raise ValueError(
            f"{path} was trained with a Python nn.Module, not a registered model name, so it "
            "cannot be rebuilt from the checkpoint; load it with the module in Python"
        )
    # The state dict replaces every pretrained tensor, so the file (or download) a fine-tuning
    # run started from is not needed to rebuild it: drop `weights` from the model's arguments.
    kwargs = {k: v for k, v in (hparams.get("model_kwargs") or {}).items() if k != "weights"}
    module = ImageClassifier(**{**hparams, "model_kwargs": kwargs})
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # a state dict edited or saved for another network
        raise ValueError(
            f"{path}: its weights do not fit the {hparams['model']} its hyperparameters describe "
            f"({str(err).splitlines()[-1].strip()}); the file is inconsistent, save it again"
        ) from err
    class_names = hparams.get("class_names") or [str(i) for i in range(module.num_classes)]
    if transform is None:
        if hparams.get("preprocess") is None:
            raise ValueError(
                f"{path} records no preprocessing (image size, mean, std) of its data; pass "
                "predict(..., transform=...)"
            )
        transform = Preprocess.from_dict(hparams["preprocess"]).transform()
    # Batch norm folded into the convolutions, channels-last: the same logits, faster. In eval
    # mode the network returns the main logits alone (no auxiliary-head tuple).
    from moderncnn.inference import optimize_for_inference

    return Predictor(optimize_for_inference(module.model), list(class_names), transform)


def _exported_predictor(path: Path, transform: Any) -> Predictor:
    """An ONNX or TorchScript file from ``moderncnn export``, with its sidecar's names and stats."""
    from moderncnn.inference.export import load_exported, sidecar_path

    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(
            f"{side} not found: {path.name}'s class names and normalisation are kept in it; "
            "copy it beside the model, or export the checkpoint again with `moderncnn export`"
        )
    exported = load_exported(path)
    meta = exported.metadata
    if transform is None:
        if meta.get("mean") is None or meta.get("std") is None:
            raise ValueError(
                f"{side} records no normalisation mean/std (the export was made from a plain "
                "state dict); pass predict(..., transform=...)"
            )
        size = int(meta["input_size"][-1])
        preprocess = Preprocess.for_size(size, meta["mean"], meta["std"])
        if "resize_size" in meta:
            preprocess = Preprocess(size, meta["resize_size"], preprocess.mean, preprocess.std)
        transform = preprocess.transform()

    def logits(images: Tensor) -> Tensor:
        if meta.get("dynamic_batch"):
            return exported(images.cpu())
        # Exported for batch size 1 only: one image at a time.
        return torch.cat([exported(image[None].cpu()) for image in images])

    return Predictor(logits, exported.class_names, transform)


def load_predictor(
    checkpoint: str | Path, backbone: nn.Module | None = None, transform: Any = None
) -> Predictor:
    """A :class:`Predictor` from a ``.ckpt`` file, an exported model or a probe folder."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return _probe_predictor(path, backbone, transform)
    if path.suffix in EXPORTED_SUFFIXES and path.is_file():
        return _exported_predictor(path, transform)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass a .ckpt file from `moderncnn fit` "
            "or a probe folder from `moderncnn probe`"
        )
    return _classifier_predictor(path, transform)


@torch.inference_mode()
def predict(
    inputs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 32,
    backbone: nn.Module | None = None,
    transform: Callable[[Any], Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> list[Prediction]:
    """Top-k classes and probabilities of image files (folders are searched for images).

    Args:
        inputs: image files and/or folders.
        checkpoint: a ``.ckpt`` of an ImageClassifier, an ``.onnx``/``.torchscript`` file from
            ``moderncnn export``, or a folder from ``moderncnn probe``.
        topk: classes reported per image (at most the number of classes).
        batch_size: images per forward pass.
        backbone: for a probe whose backbone is not a registered model (or not rebuildable).
        transform: PIL image -> tensor; default: the preprocessing saved with the checkpoint.
        device: where the network runs.
    """
    predictor = load_predictor(checkpoint, backbone, transform)
    files = _expand(inputs)
    k = min(topk, len(predictor.class_names))
    dataset = ImageFileDataset(files, [0] * len(files), predictor.transform)
    results: list[Prediction | None] = [None] * len(files)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    if isinstance(predictor.logits, nn.Module):
        predictor.logits.to(device)
    for batch in loader:
        for index, error in batch.errors:
            results[index] = Prediction(str(files[index]), error=error)
        if batch.images is None:
            continue
        probs = predictor.logits(batch.images.to(device)).float().softmax(1).cpu()
        top = probs.topk(k, dim=1)
        for row, index in enumerate(batch.indices.tolist()):
            names = [predictor.class_names[i] for i in top.indices[row].tolist()]
            results[index] = Prediction(str(files[index]), names, top.values[row].tolist())
    return [r for r in results if r is not None]


def write_csv(predictions: list[Prediction], path: str | Path) -> None:
    """One row per file and rank: file, rank, class, probability, error."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "rank", "class", "probability", "error"])
        for p in predictions:
            if p.error is not None:
                writer.writerow([p.file, "", "", "", p.error])
            for rank, (name, prob) in enumerate(zip(p.classes, p.probabilities, strict=True), 1):
                writer.writerow([p.file, rank, name, f"{prob:.6f}", ""])


def write_json(predictions: list[Prediction], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(p) for p in predictions], indent=1) + "\n")


@user_errors_as_messages("moderncnn predict")
def main(argv: list[str] | None = None) -> int:
    """``moderncnn predict --checkpoint CKPT|PROBE_DIR FILES... [--topk K] [--csv] [--json]``."""
    parser = argparse.ArgumentParser(prog="moderncnn predict", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="image files or folders")
    parser.add_argument(
        "--checkpoint", required=True, help=".ckpt, exported .onnx/.torchscript, or probe folder"
    )
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--csv", default=None, help="write the predictions to this CSV file")
    parser.add_argument("--json", default=None, help="write the predictions to this JSON file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    predictions = predict(
        args.files, args.checkpoint, topk=args.topk, batch_size=args.batch_size, device=args.device
    )
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
