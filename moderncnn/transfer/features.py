"""Extract a frozen backbone's pooled features once, cache them, and reuse them.

Training a linear probe or a small head on cached features takes seconds, while running a
backbone over the images takes minutes; so features are computed once per backbone, weights,
transform and set of images (the cache key), and a rerun with the same key loads the cache
without running the backbone at all. A changed, added or removed image changes the key.

Features are stored as float32. ``half=True`` stores float16 instead, half the disk and
memory: enough for a probe when the features are well scaled (pooled activations of a trained
network are), but an untrained network's activations can shrink below float16's smallest
normal value (6e-5), so a conversion that changes the features by more than 0.1% is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moderncnn.io.cli_errors import user_errors_as_messages

from .cache import FeatureCache, write_cache
from .sources import (
    ImageFileDataset,
    Preprocess,
    collate_images,
    datamodule_files,
    datamodule_identity,
    datamodule_loaders,
    datamodule_preprocess,
    read_folder,
)

__all__ = ["FeatureCache", "build_backbone", "extract_features", "main", "weights_sha256"]

HALF_TOLERANCE = 1e-3  # largest relative (Frobenius) change float16 storage may make


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_backbone(name: str, weights: str | None, in_chans: int = 3) -> nn.Module:
    """A registered model, with ``weights`` loaded, in eval mode."""
    from moderncnn.models import create_model

    return create_model(name, in_chans=in_chans, weights=weights).eval()


def default_preprocess(backbone: nn.Module, name: str | None, weights: str | None) -> Preprocess:
    """The evaluation transform a backbone expects: its weights' recipe, else its input size."""
    from moderncnn.data.stats import IMAGENET
    from moderncnn.models.pretrained import find_pretrained

    entry = find_pretrained(name, weights) if weights else None
    in_chans, size = getattr(backbone, "input_size", (3, 224, 224))[:2]
    mean, std = IMAGENET
    if in_chans == 1:  # grey images: the ImageNet statistics averaged over R, G, B
        mean, std = (0.449,), (0.226,)
    if entry is not None:
        return Preprocess(entry.crop_size, entry.resize_size, tuple(mean), tuple(std))
    return Preprocess.for_size(size, mean, std)


def fast_inference_copy(backbone: nn.Module) -> nn.Module | None:
    """A copy of ``backbone`` with batch norm folded into its convs, channels-last; or None.

    The same outputs, faster (:func:`moderncnn.inference.optimize_for_inference`). None when
    there is no batch norm to fold (the module then runs as it is, uncopied), and, with a
    warning, when a foreign module resists the copy (an attribute ``deepcopy`` cannot copy...).
    """
    from moderncnn.inference import optimize_for_inference

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        return None
    try:
        return optimize_for_inference(backbone)
    except Exception as err:  # anything a foreign module raises while being copied or folded
        _warn_unoptimized(backbone, err)
        return None


def _warn_unoptimized(backbone: nn.Module, err: Exception) -> None:
    warnings.warn(
        f"optimize_for_inference does not suit {type(backbone).__name__} "
        f"({type(err).__name__}: {err}); it runs unchanged, in eval mode",
        stacklevel=3,
    )


def feature_fn(
    backbone: nn.Module, stage: int | None = None, optimize: bool = True
) -> Callable[[Tensor], Tensor]:
    """Images -> N x D features: pooled pre-logits, a pooled stage map, or any 4-D/2-D output.

    ``optimize``: compute them with :func:`fast_inference_copy` (the same features, faster).
    Should the copy fail on the first batch (a foreign ``forward`` that calls ``view`` on a
    channels-last map, say), the backbone itself takes over, with a warning.
    """
    if stage is not None:
        info = getattr(backbone, "feature_info", None)
        if info is None or not hasattr(backbone, "forward_intermediates"):
            raise ValueError(
                f"stage={stage} needs a moderncnn model (feature_info, forward_intermediates), "
                f"got {type(backbone).__name__}"
            )
        if not -len(info) <= stage < len(info):
            raise ValueError(f"stage must be in 0..{len(info) - 1}, got {stage}")

    def run(net: nn.Module, x: Tensor) -> Tensor:
        if stage is not None:
            return _pool(net.forward_intermediates(x, indices=[stage])[0])
        if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
            return net.forward_head(net.forward_features(x), pre_logits=True)
        return _pool(net(x))

    fast = fast_inference_copy(backbone) if optimize else None
    checked = False

    def features(x: Tensor) -> Tensor:
        nonlocal fast, checked
        if fast is None:
            return run(backbone, x)
        try:  # channels-last images for the channels-last weights
            out = run(fast, x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x)
        except Exception as err:
            if checked:  # it worked before: a real error of this batch
                raise
            _warn_unoptimized(backbone, err)
            fast = None
            return run(backbone.eval(), x)
        checked = True
        return out

    return features


def _under_bf16(fn: Callable[[Tensor], Tensor], device_type: str) -> Callable[[Tensor], Tensor]:
    """``fn`` computed under bfloat16 autocast, its features returned as float32."""

    def run(x: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return fn(x).float()

    return run


def _pool(out: Tensor) -> Tensor:
    if out.ndim == 4:  # N x C x H x W -> N x C
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
    if out.ndim == 2:
        return out
    raise ValueError(
        f"the backbone returned a {out.ndim}-D {tuple(out.shape)} tensor; expected N x C x H x W "
        "(pooled here) or N x D features"
    )


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _to_storage(features: Tensor, where: str, half: bool) -> Tensor:
    if not torch.isfinite(features).all():
        raise ValueError(f"{where}: the backbone produced non-finite features (NaN or inf)")
    if not half:
        return features
    stored = features.half()
    error = ((stored.float() - features).norm() / features.norm().clamp(min=1e-30)).item()
    if not torch.isfinite(stored).all() or error > HALF_TOLERANCE:
        raise ValueError(
            f"{where}: float16 would change these features by {error:.1e} (relative; overflow or "
            "underflow); extract them without half=True (--half)"
        )
    return stored


@torch.inference_mode()
def _run_folder(fn, root: Path, splits, transform, loader_args: dict, device, progress, half):
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    out = {}
    for split in splits:
        dataset = ImageFileDataset([root / f for f in split.files], split.labels, transform)
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
            raise ValueError(f"no image of split {split.name!r} in {root} could be decoded")
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
    from tqdm.auto import tqdm

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


def _file_stamps(root: Path, splits) -> list[Any]:
    stamps = []
    for split in splits:
        for name in split.files:
            stat = (root / name).stat()
            stamps.append([split.name, name, stat.st_size, stat.st_mtime_ns])
    return stamps


def _weights_spec(weights: str | None) -> str | None:
    """``weights`` as predict can use it later: local files as absolute paths."""
    if weights is None or weights.startswith("https://") or not Path(weights).is_file():
        return weights
    return str(Path(weights).expanduser().resolve())


def _resize_batch(size: int) -> Callable[[Tensor], Tensor]:
    def resize(images: Tensor) -> Tensor:
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)

    return resize


def extract_features(
    backbone: nn.Module | str,
    data: str | Path | Any,
    out: str | Path,
    *,
    weights: str | None = None,
    stage: int | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    transform: Callable[[Any], Tensor] | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    half: bool = False,
    bf16: bool = False,
    progress: bool = True,
) -> FeatureCache:
    """Pooled features of every image in ``data``, cached in ``out`` (reused when unchanged).

    Args:
        backbone: a registered model name, or any module (moderncnn models give
            ``forward_head(..., pre_logits=True)``; others' 4-D outputs are average-pooled).
        data: an image folder (class sub-folders, optionally under train/val/test), or a
            LightningDataModule with ``*_dataloader`` methods.
        out: cache folder.
        weights: for a named backbone: ``"imagenet"``, a URL or a file (see create_model).
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
    """
    name = backbone if isinstance(backbone, str) else None
    device = torch.device(device)
    folder = isinstance(data, str | Path)
    if batch_size is None:
        side = image_size or (224 if folder else int(getattr(data, "input_size", (0, 32))[-1]))
        batch_size = 8 if device.type == "cpu" and side >= 128 else 64
    if folder:
        root = Path(data).expanduser()
        class_names, splits = read_folder(root)
        in_chans = 3
    else:
        dm = data
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")
        loaders = datamodule_loaders(dm, batch_size, num_workers)
        class_names, in_chans = list(dm.class_names), int(getattr(dm, "in_chans", 3))
    model = (build_backbone(name, weights, in_chans) if name else backbone.eval()).to(device)

    # The preprocessing is recorded (for predict) only when we built the transform.
    preprocess: Preprocess | None = None
    if transform is None and folder:
        preprocess = default_preprocess(model, name, weights)
        if image_size:
            preprocess = Preprocess.for_size(image_size, preprocess.mean, preprocess.std)
        transform = preprocess.transform()
    elif transform is None:
        preprocess = datamodule_preprocess(dm, image_size)
        transform = _resize_batch(image_size) if image_size else None
    meta = {
        "backbone": name or f"{type(model).__module__}.{type(model).__qualname__}",
        "weights": _weights_spec(weights),
        "weights_sha256": weights_sha256(model),
        "stage": stage,
        "dtype": "float16" if half else "float32",
        "compute": "bfloat16-autocast" if bf16 else "float32",
        "transform": repr(transform),
        "preprocess": None if preprocess is None else preprocess.to_dict(),
        "source": str(root.resolve()) if folder else type(dm).__name__,
    }
    data_id = _file_stamps(root, splits) if folder else datamodule_identity(dm, loaders)
    key = _hash([meta, class_names, data_id])
    cached = FeatureCache.open_if_valid(out, key)
    if cached is not None:
        return cached

    fn = feature_fn(model, stage)
    if bf16:
        fn = _under_bf16(fn, device.type)
    if folder:
        loader_args = {"batch_size": batch_size, "num_workers": num_workers}
        results = _run_folder(fn, root, splits, transform, loader_args, device, progress, half)
    else:
        results = _run_datamodule(fn, dm, loaders, transform, device, progress, half)
    meta["num_features"] = int(next(iter(results.values()))["features"].shape[1])
    return write_cache(out, key, meta, class_names, results)


@user_errors_as_messages("moderncnn features")
def main(argv: list[str] | None = None) -> int:
    """``moderncnn features --backbone NAME (--data DIR | --config YAML) --out CACHE``."""
    parser = argparse.ArgumentParser(prog="moderncnn features", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="a model name (`moderncnn models`)")
    parser.add_argument("--weights", default=None, help="'imagenet', an https:// URL or a file")
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
    args = parser.parse_args(argv)
    if args.data:
        data = args.data
    else:  # the same reading of a config's `data:` section as `moderncnn preview`
        from moderncnn.training.plots import datamodule_from_config

        data = datamodule_from_config(args.config)
    cache = extract_features(
        args.backbone,
        data,
        args.out,
        weights=args.weights,
        stage=args.stage,
        batch_size=args.batch_size,
        num_workers=args.workers,
        image_size=args.image_size,
        device=args.device,
        half=args.half,
        bf16=args.bf16,
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
