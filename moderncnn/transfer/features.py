"""Extract a frozen backbone's pooled features once, cache them, and reuse them.

Training a linear probe or a small head on cached features takes seconds, while running a
backbone over the images takes minutes; so features are computed once per backbone, weights,
preprocessing and set of images, and a rerun with the same key loads the cache without
building the backbone at all. The key is explicit data: the backbone's model card, the SHA-256
of its weights file (or the hash in a named weights file's name), the preprocessing values,
and every image's name, size and SHA-256 -- a changed, added or removed image changes it, also
when a copy kept the old size and modification time.

Features are stored as float32. ``half=True`` stores float16 instead, half the disk and
memory: enough for a probe when the features are well scaled (pooled activations of a trained
network are), but an untrained network's activations can shrink below float16's smallest
normal value (6e-5), so a conversion that changes the features by more than 0.1% is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from moderncnn.data.files import DecodedImageFiles, collate_images, content_stamps, read_folder
from moderncnn.inference.backbone import weights_sha256
from moderncnn.inference.fast_features import backbone_features
from moderncnn.inference.runtimes import RUNTIMES, THREADS_ENV
from moderncnn.io.card import Preprocess
from moderncnn.io.command_line import CommandParser
from moderncnn.io.errors import DataError
from moderncnn.training.config import datamodule_from_config

from .backbones import resolve_backbone
from .cache import FeatureCache, write_cache
from .sources import (
    datamodule_files,
    datamodule_identity,
    datamodule_loaders,
    datamodule_preprocess,
)

__all__ = ["FeatureCache", "extract_features", "main"]

HALF_TOLERANCE = 1e-3  # largest relative (Frobenius) change float16 storage may make


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _to_storage(features: Tensor, where: str, half: bool) -> Tensor:
    if not torch.isfinite(features).all():
        raise DataError(f"{where}: the backbone produced non-finite features (NaN or inf)")
    if not half:
        return features
    stored = features.half()
    error = ((stored.float() - features).norm() / features.norm().clamp(min=1e-30)).item()
    if not torch.isfinite(stored).all() or error > HALF_TOLERANCE:
        raise DataError(
            f"{where}: float16 would change these features by {error:.1e} (relative; overflow or "
            "underflow); extract them without half=True (--half)"
        )
    return stored


@torch.inference_mode()
def _run_folder(fn, root: Path, splits, transform, loader_args: dict, device, progress, half):
    out = {}
    for split in splits:
        dataset = DecodedImageFiles([root / f for f in split.files], split.labels, transform)
        loader = DataLoader(dataset, collate_fn=collate_images, **loader_args)
        feats, labels, kept, skipped = [], [], [], []
        for batch in tqdm(loader, desc=f"features {split.name}", disable=not progress):
            skipped += [{"file": split.files[i], "error": e} for i, e in batch.errors]
            if batch.images is None:
                continue
            feats.append(fn(batch.images.to(device)).float().cpu())
            labels.append(batch.labels)
            kept += [split.files[i] for i in batch.indices.tolist()]
        if not feats:
            raise DataError(f"no image of split {split.name!r} in {root} could be decoded")
        features = _to_storage(torch.cat(feats), f"{root} ({split.name})", half)
        out[split.name] = {
            "features": features,
            "labels": torch.cat(labels),
            "files": kept,
            "skipped": skipped,
        }
    return out


@torch.inference_mode()
def _run_datamodule(fn, dm, loaders, batch_transform, device, progress, half):
    out = {}
    # Files the data module itself left out when it scanned them (reported with train).
    bad = [{"file": str(f), "error": e} for f, e in (getattr(dm, "bad_files", None) or {}).items()]
    for split, loader in loaders.items():
        feats, labels = [], []
        for batch in tqdm(loader, desc=f"features {split}", disable=not progress):
            # moderncnn's tensor data modules normalise here (and augment only while a trainer
            # is training, which this is not).
            images, target = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
            images = images.to(device)
            if batch_transform is not None:
                images = batch_transform(images)
            feats.append(fn(images).float().cpu())
            labels.append(target.long())
        out[split] = {
            "features": _to_storage(torch.cat(feats), f"{type(dm).__name__} {split}", half),
            "labels": torch.cat(labels),
            "files": datamodule_files(loader),
            "skipped": bad if split == "train" else [],
        }
    return out


def _resize_batch(size: int) -> Callable[[Tensor], Tensor]:
    def resize(images: Tensor) -> Tensor:
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)

    return resize


def extract_features(
    backbone: nn.Module | str | None,
    data: str | Path | Any,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    stage: int | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    transform: Callable[[Any], Tensor] | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    half: bool = False,
    bf16: bool = False,
    progress: bool = True,
    runtime: str = "auto",
    threads: int | None = None,
) -> FeatureCache:
    """Pooled features of every image in ``data``, cached in ``out`` (reused when unchanged).

    Args:
        backbone: a registered model name, any module (moderncnn models give
            ``forward_head(..., pre_logits=True)``; others' 4-D outputs are average-pooled), or
            None when ``weights`` is a checkpoint of ours (its card names the architecture).
        data: an image folder (class sub-folders, or only train/val/test folders of them), or a
            LightningDataModule with ``*_dataloader`` methods.
        out: cache folder.
        weights: ``"imagenet"``, a URL, a state-dict file, or a ``.ckpt``/saved model folder of
            ours (then its own architecture arguments and normalisation are used).
        model_kwargs: for a named backbone: the entry point's arguments (``channels``, ...,
            ``in_chans``), as the weights were trained with.
        stage: take this stage's map from ``feature_info`` (pooled) instead of the last one.
        batch_size: images per forward pass; None: 8 for images of 128 px or more on a CPU
            (a DenseNet's concatenated maps for 64 images at 224 px overflow the CPU's caches:
            8 runs about 2x faster there, see benchmarks/features.py), else 64.
        num_workers: DataLoader processes decoding images.
        transform: folders: PIL image -> tensor (default: the backbone's evaluation recipe);
            data modules: applied to each normalised batch (e.g. ``v2.Resize(224)``).
        image_size: side the images are resized to (folders: centre-cropped as well).
        device: where the backbone runs.
        half: store float16 (refused if that would change the features by more than 0.1%).
        bf16: compute under bfloat16 autocast, store float32: about 2x faster on CPUs with
            bf16 units (AVX512-BF16, AMX) and on GPUs, features within a few % (a probe's
            accuracy barely moves); slower on CPUs without them. Part of the cache key.
        progress: show tqdm progress bars.
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``: where the backbone runs
            (:mod:`~moderncnn.inference.fast_features`); fp32 features agree within round-off.
        threads: intra-op threads (default $MODERNCNN_THREADS, else the usable cores).
    """
    device = torch.device(device)
    folder = isinstance(data, str | Path)
    if folder:
        root = Path(data).expanduser()
        class_names, splits = read_folder(root)
        data_chans = None
    else:
        dm = data
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")
        class_names, data_chans = list(dm.class_names), int(getattr(dm, "in_chans", 3))
    source = resolve_backbone(backbone, weights, model_kwargs, data_chans)
    card = source.card
    if batch_size is None:
        side = image_size or (card.preprocess.image_size if card.preprocess else 224)
        side = side if folder else int(getattr(data, "input_size", (0, side))[-1])
        batch_size = 8 if device.type == "cpu" and side >= 128 else 64
    if not folder:
        loaders = datamodule_loaders(dm, batch_size, num_workers)

    # What the images go through, as data: the preprocessing is recorded (for predict) only
    # when we built the transform.
    if transform is None and folder:
        preprocess = card.preprocess
        if image_size:
            preprocess = Preprocess.for_size(image_size, preprocess.mean, preprocess.std)
        transform, transform_id = preprocess.transform(), preprocess.to_dict()
    elif transform is None:
        preprocess = datamodule_preprocess(dm, image_size)
        transform = _resize_batch(image_size) if image_size else None
        transform_id = {"resize_batch": image_size}
    else:
        preprocess, transform_id = None, repr(transform)
    card = card.replace(preprocess=preprocess)
    settings = {
        "stage": stage,
        "dtype": "float16" if half else "float32",
        "compute": "bfloat16-autocast" if bf16 else "float32",
        "transform": transform_id,
    }
    if folder:
        files = [root / name for split in splits for name in split.files]
        data_id: Any = [str(root.resolve()), content_stamps(files)]
    else:
        data_id = datamodule_identity(dm, loaders)

    model = None
    weights_id = source.weights_id
    if weights_id is None:  # random initial weights: only the built network says which
        model = source.build()
        weights_id = "sha256:" + weights_sha256(model)
    key = _hash([card.to_dict(), weights_id, settings, class_names, data_id])
    cached = FeatureCache.open_if_valid(out, key)
    if cached is not None:
        return cached

    model = (model if model is not None else source.build()).to(device)
    card = card.replace(source={**card.source, "weights_sha256": weights_sha256(model)})
    fn, _ = backbone_features(
        model, card, out, stage, runtime=runtime, precision="bf16" if bf16 else "fp32",
        threads=threads, device=device,
    )  # fmt: skip
    if folder:
        loader_args = {"batch_size": batch_size, "num_workers": num_workers}
        results = _run_folder(fn, root, splits, transform, loader_args, device, progress, half)
    else:
        results = _run_datamodule(fn, dm, loaders, transform, device, progress, half)
    meta = {
        "card": card.to_dict(),
        "backbone": card.architecture,
        "weights": card.source.get("weights"),
        "weights_sha256": card.source["weights_sha256"],
        **settings,
        "preprocess": None if preprocess is None else preprocess.to_dict(),
        "source": str(root.resolve()) if folder else type(dm).__name__,
        "num_features": int(next(iter(results.values()))["features"].shape[1]),
    }
    return write_cache(out, key, meta, class_names, results)


def main(argv: list[str] | None = None) -> int:
    """``moderncnn features [--backbone NAME] [--weights W] (--data DIR | -c YAML) --out DIR``."""
    parser = CommandParser(prog="moderncnn features", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="a model name (`moderncnn models`); not with a .ckpt")
    parser.add_argument(
        "--weights", default=None, help="'imagenet', an https:// URL, a file, or a .ckpt of ours"
    )
    parser.add_argument(
        "--model-kwargs", type=json.loads, default=None, metavar="JSON",
        help='the backbone\'s arguments, e.g. \'{"channels": [16, 32, 64], "layers": [1, 1, 1]}\'',
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="image folder: class sub-folders (or train/val/test/)")
    source.add_argument("--config", help="training YAML whose `data:` section gives the data")
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--stage", type=int, default=None, help="pool this stage's feature map")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (CPU 8, GPU 64)"
    )
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--image-size", type=int, default=None, help="side fed to the backbone")
    parser.add_argument("--half", action="store_true", help="store float16 features")
    parser.add_argument(
        "--bf16", action="store_true", help="compute under bfloat16 autocast (CPU bf16 units, GPU)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--runtime", default="auto", choices=RUNTIMES,
        help="where the backbone runs; auto: ONNX Runtime or OpenVINO on a CPU, torch on CUDA",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help=f"intra-op threads (default ${THREADS_ENV})"
    )
    args = parser.parse_args(argv)
    # The same reading of a config's `data:` section as `moderncnn preview`.
    data = args.data if args.data else datamodule_from_config(args.config)
    cache = extract_features(
        args.backbone,
        data,
        args.out,
        weights=args.weights,
        model_kwargs=args.model_kwargs,
        stage=args.stage,
        batch_size=args.batch_size,
        num_workers=args.workers,
        image_size=args.image_size,
        device=args.device,
        half=args.half,
        bf16=args.bf16,
        runtime=args.runtime,
        threads=args.threads,
    )
    for split in cache.splits:
        skipped = cache.skipped(split)
        print(
            f"{split}: {len(cache.labels(split))} images x {cache.num_features} features"
            + (f", {len(skipped)} unreadable files skipped" if skipped else "")
        )
        for item in skipped[:20]:
            print(f"  skipped {item['error']}")
    print(f"cache: {cache.root}")
    return 0
