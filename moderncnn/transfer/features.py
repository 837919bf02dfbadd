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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from moderncnn.data.files import (
    DecodedImageFiles,
    FolderSplit,
    collate_images,
    content_stamps,
    read_folder,
)
from moderncnn.data.packed import StreamingDataModule, is_packed_folder
from moderncnn.inference.backbone import weights_sha256
from moderncnn.inference.distributed import (
    ONE_PROCESS,
    PredictSettings,
    Shard,
    ShardWriter,
    is_rank_zero,
    plan_shards,
    run_sharded,
)
from moderncnn.inference.fast_features import backbone_features
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ConfigError, DataError
from moderncnn.training.config import datamodule_from_config

from .backbones import resolve_backbone
from .cache import FeatureCache, finished_shards, start_cache, write_manifest, write_shard
from .sources import (
    datamodule_files,
    datamodule_identity,
    datamodule_loaders,
    datamodule_preprocess,
)

__all__ = ["FeatureCache", "PredictSettings", "extract_features", "features", "show_features"]

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


class _IndexedSplits(Dataset):
    """A data module's split datasets as one, numbered across the splits; each item comes with
    its global index, so a batch knows which images it holds."""

    def __init__(self, loaders: dict[str, DataLoader]) -> None:
        self.datasets = [loader.dataset for loader in loaders.values()]
        self.collates = [loader.collate_fn for loader in loaders.values()]
        self.starts = [0]
        for dataset in self.datasets:
            self.starts.append(self.starts[-1] + len(dataset))

    def __len__(self) -> int:
        return self.starts[-1]

    def _part(self, index: int) -> int:
        return next(i for i in range(len(self.datasets)) if index < self.starts[i + 1])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        part = self._part(index)
        return self.datasets[part][index - self.starts[part]], index

    def collate(self, items: list[tuple[Any, int]]) -> tuple[Any, Tensor]:
        if not items:  # the empty batch of a process without a shard
            return None, torch.empty(0, dtype=torch.long)
        collate = self.collates[self._part(items[0][1])]  # a batch lies in one shard, one split
        return collate([item for item, _ in items]), torch.tensor([i for _, i in items])


class _FeatureStep:
    """One batch -> its rows: features, labels, global indices and the images that failed.

    The backbone's feature function is made on the first batch, on the process's device."""

    def __init__(self, make_fn: Callable[[nn.Module, torch.device], Callable], dm: Any = None,
                 batch_transform: Callable[[Tensor], Tensor] | None = None) -> None:  # fmt: skip
        self.make_fn, self.dm, self.batch_transform = make_fn, dm, batch_transform
        self.fn: Callable[[Tensor], Tensor] | None = None

    def __call__(self, batch: Any, module: Any) -> dict[str, Any]:
        if self.fn is None:
            self.fn = self.make_fn(module.network, module.device)
        if self.dm is None:  # an image folder: ImageBatch
            errors = list(batch.errors)
            if batch.images is None:
                empty = torch.empty(0)
                return {"features": empty, "labels": batch.labels, "indices": batch.indices,
                        "errors": errors}  # fmt: skip
            images, labels, indices = batch.images, batch.labels, batch.indices
        else:
            # moderncnn's tensor data modules normalise here (and augment only while a trainer
            # is training, which this is not).
            given, indices = batch
            if given is None:
                return {"features": torch.empty(0), "labels": indices, "indices": indices,
                        "errors": []}  # fmt: skip
            dm = self.dm
            images, labels = dm.on_after_batch_transfer(dm.on_before_batch_transfer(given, 0), 0)
            labels, errors = labels.long(), []
        images = images.to(module.device)
        if self.batch_transform is not None:
            images = self.batch_transform(images)
        features = self.fn(images).float().cpu()
        return {"features": features, "labels": labels.cpu(), "indices": indices, "errors": errors}


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
    trainer: PredictSettings | None = None,
    shard_size: int = 4096,
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
        trainer: processes to run on (devices, nodes, strategy, accelerator): the images are
            shared out in shards, each process writes its own, and the cache is the same as one
            process makes (:mod:`~moderncnn.inference.distributed`). Default: one process on
            ``device``. Several processes run the backbone in torch.
        shard_size: images per cache file. A run that stops part-way keeps its finished shards
            and computes only the missing ones when run again with the same arguments.
    """
    device = torch.device(device)
    images = _Images.read(data)
    source = resolve_backbone(backbone, weights, model_kwargs, images.in_chans)
    if batch_size is None:
        batch_size = _default_batch_size(source.card, images, image_size, device)
    images.open_packed(source.card, image_size, batch_size)
    if not images.folder:
        images.loaders = datamodule_loaders(images.dm, batch_size, num_workers)
        image_size = None if images.root else image_size  # a packed folder is read at its size
    transform, transform_id, preprocess = images.transform(source.card, transform, image_size)
    card = source.card.replace(preprocess=preprocess)
    settings = {
        "stage": stage,
        "dtype": "float16" if half else "float32",
        "compute": "bfloat16-autocast" if bf16 else "float32",
        "transform": transform_id,
    }
    model, weights_id = _weights_identity(source)
    key = _hash([card.to_dict(), weights_id, settings, images.class_names, images.identity()])
    cached = FeatureCache.open_if_valid(out, key)
    if cached is not None:
        return cached

    model = model if model is not None else source.build()
    card = card.replace(source={**card.source, "weights_sha256": weights_sha256(model)})
    names, dataset, collate, sizes = images.dataset(transform)
    meta = {
        "card": card.to_dict(),
        "backbone": card.architecture,
        "weights": card.source.get("weights"),
        "weights_sha256": card.source["weights_sha256"],
        **settings,
        "preprocess": None if preprocess is None else preprocess.to_dict(),
        "source": images.source(),
    }
    job = _CacheJob(Path(out), key, meta, images.class_names, names, half, images.skipped())
    trainer = trainer or PredictSettings()
    trainer.check()
    runtime = _runtime_for(runtime, trainer.processes)
    precision = "bf16" if bf16 else "fp32"

    def make_fn(network: nn.Module, on: torch.device) -> Callable[[Tensor], Tensor]:
        fn, _ = backbone_features(
            network, card, out, stage, runtime=runtime, precision=precision, threads=threads,
            device=on,
        )  # fmt: skip
        return fn

    # A data module's batches go through its own hooks (and the batch transform).
    step = _FeatureStep(make_fn, *((None, None) if images.folder else (images.dm, transform)))
    if trainer.processes == 1:  # checked (stage, runtime) before any image is read
        step.fn = make_fn(model.to(device), device)
    shards = plan_shards(sizes, shard_size)
    start_cache(out)
    todo = [s for s in shards if s.name not in finished_shards(out, key, shards)]
    writer = ShardWriter(shards, job.save, lambda: job.finish(shards))
    run_sharded(
        trainer, device, model, step, dataset, collate, todo, writer,
        batch_size=batch_size, num_workers=num_workers, progress=progress,
    )  # fmt: skip
    return FeatureCache(out)


@dataclass
class _Images:
    """The images to extract features of: an image folder, or a data module's splits."""

    folder: bool
    class_names: list[str]
    in_chans: int | None  # a data module's; None: the backbone's (a folder's images adapt)
    root: Path | None = None
    splits: list[FolderSplit] = field(default_factory=list)
    links: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # skipped symlinks
    dm: Any = None
    loaders: dict[str, DataLoader] = field(default_factory=dict)

    @classmethod
    def read(cls, data: str | Path | Any) -> _Images:
        if isinstance(data, str | Path) and is_packed_folder(data):
            # Packed chunks: streamed through StreamingDataModule once the backbone's
            # preprocessing is known (open_packed), as a folder is read with it.
            root = Path(data).expanduser()
            return cls(False, StreamingDataModule(str(root)).class_names, None, root=root)
        if isinstance(data, str | Path):
            root = Path(data).expanduser()
            links: dict[str, list[dict[str, str]]] = {}  # symlinks out of the root: skipped
            class_names, splits = read_folder(root, skipped=links)
            return cls(True, class_names, None, root=root, splits=splits, links=links)
        data.prepare_data()
        data.setup("fit")
        data.setup("test")
        return cls(False, list(data.class_names), int(getattr(data, "in_chans", 3)), dm=data)

    def open_packed(self, card: ModelCard, image_size: int | None, batch_size: int) -> None:
        """A packed folder's data module, with the backbone's evaluation preprocessing."""
        if self.root is None or self.folder or self.dm is not None:
            return
        preprocess = card.preprocess
        if image_size:
            preprocess = Preprocess.for_size(image_size, preprocess.mean, preprocess.std)
        self.dm = StreamingDataModule(
            str(self.root), image_size=preprocess.image_size, resize_size=preprocess.resize_size,
            mean=preprocess.mean, std=preprocess.std, in_chans=card.in_chans,
            batch_size=batch_size,
        )  # fmt: skip
        self.dm.set_eval_transform(preprocess.transform())  # exactly a folder's preprocessing
        self.dm.setup("fit")

    def side(self, side: int) -> int:
        """The side of the images the backbone sees: a data module's own input size."""
        return side if self.folder else int(getattr(self.dm, "input_size", (0, side))[-1])

    def transform(
        self, card: ModelCard, transform: Callable[[Any], Tensor] | None, image_size: int | None
    ) -> tuple[Callable[[Any], Tensor] | None, Any, Preprocess | None]:
        """What the images go through, and that as data (part of the key); the preprocessing
        is recorded (for predict) only when it is ours."""
        if transform is not None:
            return transform, repr(transform), None
        if self.folder:
            preprocess = card.preprocess
            if image_size:
                preprocess = Preprocess.for_size(image_size, preprocess.mean, preprocess.std)
            return preprocess.transform(), preprocess.to_dict(), preprocess
        preprocess = datamodule_preprocess(self.dm, image_size)
        resize = _resize_batch(image_size) if image_size else None
        return resize, {"resize_batch": image_size}, preprocess

    def identity(self) -> Any:
        """What identifies the images' content (part of the cache key)."""
        if not self.folder:
            return datamodule_identity(self.dm, self.loaders)
        files = [self.root / name for split in self.splits for name in split.files]
        return [str(self.root.resolve()), content_stamps(files)]

    def dataset(self, transform: Any) -> tuple[list[str | None], Dataset, Callable, dict]:
        """(file names, dataset, collate function, images per split) to run through."""
        if self.folder:
            names = [name for split in self.splits for name in split.files]
            labels = [label for split in self.splits for label in split.labels]
            dataset = DecodedImageFiles([self.root / n for n in names], labels, transform)
            return names, dataset, collate_images, {s.name: len(s.files) for s in self.splits}
        indexed = _IndexedSplits(self.loaders)
        names = [name for loader in self.loaders.values() for name in _files_or_none(loader)]
        sizes = {split: len(loader.dataset) for split, loader in self.loaders.items()}
        return names, indexed, indexed.collate, sizes

    def source(self) -> str:
        return str(self.root.resolve()) if self.root else type(self.dm).__name__

    def skipped(self) -> dict[str, list[dict[str, str]]]:
        """Files left out before extraction: a folder's symlinks out of its root, with their
        split; those a data module itself left out when it scanned them (with train)."""
        if self.folder:
            return self.links
        bad = [{"file": str(f), "error": e} for f, e in _bad_files(self.dm)]
        return {"train": bad} if bad else {}


def _default_batch_size(
    card: ModelCard, images: _Images, image_size: int | None, device: torch.device
) -> int:
    """8 for images of 128 px or more on a CPU (see ``extract_features``), else 64."""
    side = images.side(image_size or (card.preprocess.image_size if card.preprocess else 224))
    return 8 if device.type == "cpu" and side >= 128 else 64


def _weights_identity(source: Any) -> tuple[nn.Module | None, str]:
    """The backbone's weights as data; random initial weights are built to be hashed (the
    network is returned, so it is not built twice)."""
    if source.weights_id is not None:
        return None, source.weights_id
    # Drawn from seed 0: every process of a run, and a resumed run, builds the same one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = source.build()
    return model, "sha256:" + weights_sha256(model)


def _runtime_for(runtime: str, processes: int) -> str:
    """Several processes each make their own copy on their own device, in torch: ONNX Runtime
    and OpenVINO run one process (their export is shared, their threads are not)."""
    if processes == 1:
        return runtime
    if runtime not in ("auto", "torch"):
        raise ConfigError(
            f"runtime {runtime!r} runs in one process; with trainer.devices x "
            f"trainer.num_nodes = {processes} processes use runtime 'torch'"
        )
    return "torch"


def _files_or_none(loader: DataLoader) -> list[str | None]:
    return datamodule_files(loader) or [None] * len(loader.dataset)


def _bad_files(dm: Any) -> list[tuple[Any, str]]:
    return list((getattr(dm, "bad_files", None) or {}).items())


class _CacheJob:
    """Writes a feature cache's shards (any process) and its manifest (process 0, last)."""

    def __init__(self, root, key, meta, class_names, names, half, skipped) -> None:
        self.root, self.key, self.meta, self.class_names = root, key, meta, class_names
        self.names, self.half, self.skipped = names, half, skipped

    def save(self, shard: Shard, rows: dict[str, Any]) -> None:
        files = [self.names[i] for i in rows["indices"].tolist()]
        features = rows["features"]
        if len(files):
            features = _to_storage(features, f"{self.root} ({shard.name})", self.half)
        else:  # a shard of unreadable images only
            features = torch.empty(0, 0, dtype=torch.float16 if self.half else torch.float32)
        skipped = [{"file": self.names[i], "error": e} for i, e in rows["errors"]]
        content = {
            "features": features,
            "labels": rows["labels"],
            "files": [] if None in files else files,
            "skipped": skipped,
        }
        write_shard(self.root, self.key, shard, content)

    def finish(self, shards: list[Shard]) -> FeatureCache:
        from safetensors import safe_open

        widths = {}
        for shard in shards:
            with safe_open(str(self.root / f"{shard.name}.safetensors"), "pt") as f:
                rows, width = f.get_slice("features").get_shape()
            if rows:
                widths[shard.split] = width
        for split in dict.fromkeys(s.split for s in shards):
            if split not in widths:
                raise DataError(
                    f"no image of split {split!r} in {self.meta['source']} could be decoded"
                )
        meta = {**self.meta, "num_features": int(next(iter(widths.values())))}
        return write_manifest(self.root, self.key, meta, self.class_names, shards, self.skipped)


def features(
    out: str | Path,
    data: str | Path | None = None,
    *,
    config: str | None = None,
    arch: str | None = None,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    stage: int | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    image_size: int | None = None,
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    device: str = "auto",
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto",
    threads: int | None = None,
    trainer: PredictSettings = ONE_PROCESS,
    shard_size: int = 4096,
) -> FeatureCache:
    """Cache a frozen backbone's pooled features of an image folder or a config's data.

    The command ``moderncnn features``; ``extract_features`` is the same with a module, a data
    module or a transform as well.

    Args:
        out: cache folder (a rerun with the same arguments reuses or completes it).
        data: image folder: class sub-folders (or train/val/test/ folders of them).
        config: instead of data, a training YAML (or shipped config name) whose data section
            gives the data.
        arch: the backbone, a registered model name (moderncnn models); not with a .ckpt.
        model: the trained artifact to take the backbone from (a .ckpt or saved-model folder
            of ours), or pretrained weights for arch: imagenet, an https:// URL or a file.
        model_kwargs: the backbone's arguments, e.g. {"channels": [16, 32, 64]}.
        stage: pool this stage's feature map (feature_info index) instead of the last.
        batch_size: images per forward pass (default: 8 on a CPU at 128 px or more, else 64).
        workers: image-decoding processes.
        image_size: side the images are resized to before the backbone.
        precision: fp32; bf16: compute under bfloat16 autocast (about 2x faster on CPUs with
            bf16 units and on GPUs), store float32; fp16: compute in fp32, store float16 (half
            the disk; refused if that changes the features by more than 0.1%).
        device: where the backbone runs; auto: CUDA if available, else the CPU.
        runtime: where the backbone runs: auto (ONNX Runtime or OpenVINO on a CPU, torch on
            CUDA), torch, onnxruntime or openvino.
        threads: intra-op threads (default $MODERNCNN_THREADS, else the usable cores).
        trainer: processes to run on (devices, nodes, strategy, accelerator).
        shard_size: images per cache file (the unit of resume).
    """
    if (data is None) == (config is None):
        raise ConfigError("features: give the images as data (a folder) or config (a YAML)")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # The same reading of a config's `data:` section as `moderncnn preview`.
    source = data if data is not None else datamodule_from_config(config)
    return extract_features(
        arch, source, out, weights=model, model_kwargs=model_kwargs, stage=stage,
        batch_size=batch_size, num_workers=workers, image_size=image_size, device=device,
        half=precision == "fp16", bf16=precision == "bf16", runtime=runtime, threads=threads,
        trainer=trainer, shard_size=shard_size,
    )  # fmt: skip


def show_features(cache: FeatureCache, arguments: dict[str, Any]) -> int:
    """What ``moderncnn features`` prints: each split's images and features, and the cache."""
    if not is_rank_zero():
        return 0  # the other processes of a multi-process run: process 0 reports
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
