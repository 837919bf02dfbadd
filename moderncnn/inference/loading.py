"""Load any model we write, through one door: :func:`load_model`.

=================  =======================================================================
artifact           what it is
=================  =======================================================================
``run.ckpt``       a Lightning checkpoint of ``ImageClassifier`` (its ``model_card`` entry)
``probe/``         ``moderncnn probe``'s folder: ``probe.json`` + ``probe_head.safetensors``
``saved/``         a saved model folder: ``config.json`` (the card) + ``model.safetensors``
``model.onnx``     an export, with its card in ``model.onnx.json``
``.torchscript``   an export, likewise
``.pth``           a plain state dict: give ``architecture=`` and ``num_classes=``
``hf_hub:u/r``     a saved model folder on the Hugging Face Hub, read through its cache
=================  =======================================================================

Each gives a :class:`LoadedModel`: its :class:`~moderncnn.io.card.ModelCard`, the network, and
``predict(files)``. Files are read with ``weights_only=True`` or as safetensors: no pickled code
runs. Loading never downloads: a probe whose backbone started from named weights needs them
already in the cache, and the message says how to get them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from moderncnn.data.files import DecodedImageFiles, collate_images, find_images
from moderncnn.io.atomic import atomic_write, atomic_write_text
from moderncnn.io.card import CARD_FORMAT, ModelCard, read_card_json
from moderncnn.io.checkpoint import read_checkpoint, read_state_dict, unwrap_state_dict
from moderncnn.io.download import cache_dir
from moderncnn.io.errors import ConfigError, DataError, MissingFileError, OutputError
from moderncnn.io.hub import hub_folder, is_hub_id
from moderncnn.models import create_model, is_model
from moderncnn.models.factory import check_model_kwargs
from moderncnn.models.pretrained import find_pretrained, load_pretrained

from .backbone import headless, under_bf16, weights_sha256
from .onnx_cache import cached_export, verified_export
from .optimize import optimize_for_inference
from .probe import PROBE_INFO, ProbeClassifier, load_probe, probe_head
from .quantize import int8_path
from .runtimes import (
    EXPORT_FORMATS,
    PRECISIONS,
    RUNTIMES,
    choose_runtime,
    format_of,
    read_sidecar,
    resolve_threads,
    run_exported,
    sidecar_path,
)
from .tta import check_tta, tta_logits

__all__ = [
    "LoadedModel",
    "Prediction",
    "build_backbone",
    "build_network",
    "card_from_checkpoint",
    "export_key",
    "load_model",
    "load_probe",
    "read_card",
    "save_model",
]

CARD_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class LoadedModel:
    """A model ready to use: its card, its network (None for ONNX), and its logits function.

    ``loaded(images)`` takes a normalised N x C x H x W batch (``loaded.transform`` prepares
    PIL images) and returns logits; :meth:`predict` classifies image files. The first call
    picks the engine (``runtime``, see :mod:`~moderncnn.inference.runtimes`) for the images'
    device: ``onnxruntime`` and ``openvino`` run the verified ONNX export, made then and
    cached beside the file (:meth:`onnx_file`).
    """

    card: ModelCard
    path: Path
    network: nn.Module | None
    runtime: str = "torch"
    run: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    precision: str = "fp32"
    threads: int | None = None
    engine: str | None = None  # the runtime chosen on the first call
    _fast: nn.Module | None = field(default=None, repr=False)

    def __call__(self, images: Tensor) -> Tensor:
        if self.run is None:
            self.run = self._runner(images.device)
        return self.run(images)

    def _runner(self, device: torch.device) -> Callable[[Tensor], Tensor]:
        self.engine = choose_runtime(self.runtime, self.precision, device)
        if self.engine == "torch":
            if self.threads is not None:
                torch.set_num_threads(resolve_threads(self.threads))
            run = _torch_runner(self.fast_network)
            return under_bf16(run, device.type) if self.precision == "bf16" else run
        path = self.onnx_file()
        return run_exported(path, "onnx", self.engine, self.precision, self.threads)

    def onnx_file(self) -> Path:
        """The ONNX file the ONNX runtimes run: int8 (made by ``moderncnn export --int8``) or
        the fp32 export, made on first use and kept beside the model, named by its hash."""
        if self.network is None:
            raise DataError(f"{self.path} is an exported model: it has no network to export")
        key = export_key(self.network, self.card)
        if self.precision == "int8":
            return _int8_file(self.path, key)
        return _cached_export(self.network, self.card, self.path, key)

    @property
    def fast_network(self) -> nn.Module:
        """The network with batch norm folded, channels-last: the same logits, faster."""
        if self.network is None:
            raise DataError(f"{self.path} is an exported model: it has no torch network")
        if self._fast is None:
            self._fast = optimize_for_inference(self.network)
        return self._fast

    @property
    def class_names(self) -> list[str]:
        return self.card.names()

    @property
    def transform(self) -> Callable[[Any], Tensor]:
        """PIL image -> normalised tensor, as the model's evaluation data was prepared."""
        if self.card.preprocess is None:
            raise DataError(
                f"{self.path} records no preprocessing (image size, mean, std); pass "
                "transform=... to predict"
            )
        return self.card.preprocess.transform()

    @torch.inference_mode()
    def predict(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        topk: int = 5,
        batch_size: int = 32,
        transform: Callable[[Any], Tensor] | None = None,
        device: str | torch.device = "cpu",
        tta: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Top-k classes and probabilities of image files (folders are searched for images).

        ``tta``: test-time augmentation, the mean probabilities over each image and its views
        (``["hflip"]``, ``["hflip", "shift"]``: :mod:`~moderncnn.inference.tta`). A file that
        cannot be decoded gets a :class:`Prediction` with its ``error``; the others are still
        classified.
        """
        tta = check_tta(tta)
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive int, got {topk!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        files = expand_inputs(inputs)
        k = min(topk, len(self.class_names))
        dataset = DecodedImageFiles(files, [0] * len(files), transform or self.transform)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
        if self.network is not None:
            self.network.to(device)
            if self.engine == "torch":
                self.run = self._fast = None  # rebuilt on the new device
        results: list[Prediction | None] = [None] * len(files)
        for batch in loader:
            for index, error in batch.errors:
                results[index] = Prediction(str(files[index]), error=error)
            if batch.images is None:
                continue
            top = self.top_classes(batch.images.to(device), k, tta)
            for (names, probs), index in zip(top, batch.indices.tolist(), strict=True):
                results[index] = Prediction(str(files[index]), names, probs)
        return [r for r in results if r is not None]

    def top_classes(
        self, images: Tensor, k: int, tta: Sequence[str] | None = None
    ) -> list[tuple[list[str], list[float]]]:
        """The ``k`` most probable classes of each image of a batch, with their probabilities."""
        if tta:
            probs = tta_logits(self, images, tta).exp().cpu()
        else:
            probs = self(images).float().softmax(1).cpu()
        _check_width(probs, len(self.class_names), self.path)
        top = probs.topk(k, dim=1)
        return [
            ([self.class_names[i] for i in classes], values)
            for classes, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]


@dataclass
class Prediction:
    """The top-k classes of one file, or why it could not be read."""

    file: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as the image files below them; each file once, in first-seen
    order (a file named and also inside a named folder, or two spellings of one path)."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files: dict[Path, Path] = {}  # resolved path -> the path as first given
    for item in map(Path, items):
        if item.is_dir():
            found = find_images(item)
            if not found:
                raise MissingFileError(f"no image files in folder {item}")
        else:
            found = [item]  # a missing or broken file is reported with the predictions
        for file in found:
            files.setdefault(file.resolve(), file)
    return list(files.values())


def _torch_runner(network: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(images: Tensor) -> Tensor:
        device = next(network.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            x = images.to(device)
            x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
            out = network(x)
        return (out[0] if isinstance(out, tuple) else out).float()

    return run


def export_key(network: nn.Module, card: ModelCard) -> str:
    """16 hex digits naming a network's export: the hash of its weights and card."""
    digest = hashlib.sha256(weights_sha256(network).encode())
    digest.update(json.dumps(card.replace(metrics={}).to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _export_stem(path: Path) -> Path:
    """``run.ckpt`` -> ``run``; a folder ``saved/`` -> ``saved/model``."""
    return path / "model" if path.is_dir() else path.with_suffix("")


def _cached_export(network: nn.Module, card: ModelCard, path: Path, key: str) -> Path:
    """The verified dynamic-batch fp32 ONNX export of ``network``, cached as ``run.KEY.onnx``
    beside ``run.ckpt`` (or in the user cache where that folder cannot be written), and used
    again only while its sidecar's key and hash match it (:mod:`.onnx_cache`)."""
    stem = _export_stem(path)
    out = stem.with_name(f"{stem.name}.{key}.onnx")
    # In the user cache, by the artifact's full path too: two read-only runs' `last.ckpt`
    # must not evict each other's exports.
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    fallback = cache_dir() / "onnx" / f"{stem.name}-{where}.{key}.onnx"
    size = None
    if card.preprocess is not None:
        size = (card.in_chans, card.preprocess.image_size, card.preprocess.image_size)
    # Beside `moderncnn export`'s own model.onnx (issue 24): that file when it is this network's
    # dynamic-batch export, else the user cache, so no model.KEY.onnx appears beside it.
    exported = stem.with_suffix(".onnx")
    if exported.is_file():
        if verified_export(exported, key) and read_sidecar(sidecar_path(exported)).get(
            "dynamic_batch"
        ):
            return exported
        return cached_export(network, card, (fallback,), key, size)
    written = cached_export(network, card, (out, fallback), key, size)
    _remove_stale_exports(written, key)
    return written


def _remove_stale_exports(current: Path, key: str) -> None:
    """Exports of earlier weights saved under the same name (``last.ckpt`` is rewritten)."""
    stem = current.name[: -len(f".{key}.onnx")]
    for old in current.parent.glob(f"{stem}.*.onnx"):
        if old != current and re.fullmatch(rf"{re.escape(stem)}\.[0-9a-f]{{16}}\.onnx", old.name):
            for file in (old, sidecar_path(old)):
                file.unlink(missing_ok=True)


def _int8_file(path: Path, key: str) -> Path:
    """The int8 export ``moderncnn export --int8`` wrote beside ``path`` for these weights."""
    stem = _export_stem(path)
    found = int8_path(stem.with_suffix(".onnx"))
    side = sidecar_path(found)
    if not side.is_file() or read_sidecar(side).get("export_key") != key:
        state = "is made for other weights" if side.is_file() else "does not exist"
        raise ConfigError(
            f"precision 'int8' runs {found}, which {state}: quantize the model with "
            f"`moderncnn export {path} --format onnx --int8 --calibrate CONFIG` first"
        )
    return found


def build_network(card: ModelCard, where: str = "model card") -> nn.Module:
    """The untrained network a classifier or backbone card describes (a registered model)."""
    if not is_model(card.architecture):
        raise DataError(
            f"{where}: architecture {card.architecture!r} is not a registered model, so it cannot "
            "be rebuilt from the file; load its weights into the module in Python"
        )
    classes = 0 if card.kind == "backbone" else card.num_classes
    kwargs = dict(card.model_kwargs)
    try:
        check_model_kwargs(kwargs)  # a crafted `layers: [1000000]` would build for hours
        return create_model(
            card.architecture, num_classes=classes, in_chans=card.in_chans, **kwargs
        )
    except (TypeError, ValueError) as err:  # an unknown argument, a number for a list, a size
        raise DataError(
            f"{where}: its model_kwargs {kwargs!r} do not fit {card.architecture} ({err}); the "
            "file was edited or written by another version of moderncnn: save it again"
        ) from err


def _load_state(network: nn.Module, state: Mapping[str, Tensor], card: ModelCard, where: str):
    _check_values(network, state, where)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:  # a state dict edited or saved for another network
        mismatch = _state_mismatch(network, state) or str(err).splitlines()[-1].strip()[:300]
        raise DataError(
            f"{where}: its weights do not fit the {card.architecture}"
            f"(num_classes={card.num_classes}, in_chans={card.in_chans}, "
            f"{_shown(dict(card.model_kwargs))}) its card describes ({mismatch}); the file is "
            "inconsistent, save it again"
        ) from err
    return network.eval()


# How many keys an error lists: a deep network's thousand missing keys made a 266 KB line.
SHOWN_KEYS = 5


def _keys(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(repr(k) for k in keys[:SHOWN_KEYS]) + more


def _shown(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_mismatch(network: nn.Module, state: Mapping[str, Tensor]) -> str:
    """What keeps ``state`` from loading into ``network``, briefly; "" when it fits."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k!r}: {tuple(state[k].shape)} for {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [f"missing keys {_keys(missing)}"] if missing else []
    parts += [f"unexpected keys {_keys(unexpected)}"] if unexpected else []
    if shapes:
        more = f" and {len(shapes) - SHOWN_KEYS} more" if len(shapes) > SHOWN_KEYS else ""
        parts.append(f"other shapes {', '.join(shapes[:SHOWN_KEYS])}{more}")
    return "; ".join(parts)


def _check_values(network: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Refuse NaN/inf weights and integer or bool tensors where the network has floats:
    ``load_state_dict`` would cast them silently and every prediction read ``nan%``."""
    for key, own in network.state_dict().items():
        value = state.get(key)
        if value is None:
            continue  # named by load_state_dict's check
        if own.is_floating_point() and not value.is_floating_point():
            raise DataError(
                f"{where}: weight {key!r} is {value.dtype}, not floating point; the file was "
                "edited or is not this model's: save it again"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(
                f"{where}: weight {key!r} holds NaN or infinite values (training diverged, or "
                "the file is corrupt); use an earlier checkpoint"
            )


def card_from_checkpoint(checkpoint: Any, where: str) -> ModelCard:
    """The card of a Lightning checkpoint: its ``model_card`` entry, else its hyperparameters."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise DataError(
            f"{where} is not a Lightning checkpoint of an ImageClassifier (no state_dict); for a "
            "plain state dict give the architecture (--model NAME --num-classes N)"
        )
    if "model_card" in checkpoint:
        card = ModelCard.from_dict(checkpoint["model_card"], f"{where} (model_card)")
    else:  # written before checkpoints carried a card
        card = ModelCard.from_hparams(checkpoint.get("hyper_parameters"), where)
    return card.replace(source={**card.source, "artifact": "ckpt"})


def _from_checkpoint(path: Path) -> LoadedModel:
    checkpoint = read_checkpoint(path)
    card = card_from_checkpoint(checkpoint, str(path))
    # The ImageClassifier keeps its network in `self.model`, hence the "model." key prefix.
    state = unwrap_state_dict(checkpoint, source=str(path))
    network = _load_state(build_network(card, str(path)), state, card, str(path))
    return LoadedModel(card, path, network)


def _from_state_dict(path: Path, architecture: str, num_classes: int, **kwargs: Any):
    card = ModelCard(architecture, num_classes, kwargs.pop("in_chans", 3), kwargs)
    card = card.replace(source={"artifact": "state_dict"})
    network = _load_state(build_network(card, str(path)), read_state_dict(path), card, str(path))
    return LoadedModel(card, path, network)


def _from_saved(folder: Path) -> LoadedModel:
    card = ModelCard.from_dict(read_card_json(folder / CARD_FILE), str(folder / CARD_FILE))
    state = read_state_dict(folder / WEIGHTS_FILE)
    if card.kind == "probe":
        backbone = headless(build_network(card.parent, str(folder)))
        network: nn.Module = ProbeClassifier(backbone, probe_head(card), card.head.get("stage"))
    else:
        network = build_network(card, str(folder))
    return LoadedModel(card, folder, _load_state(network, state, card, str(folder)))


def _offline_weights(weights: str, architecture: str, where: str = "model card") -> str:
    """``weights`` as a local file: a named or URL source must already be in the cache."""
    if Path(weights).expanduser().is_file():
        return str(Path(weights).expanduser())
    entry = None if "://" in weights else find_pretrained(architecture, weights)
    name = Path(weights).name if "://" in weights else (entry.file_name if entry else None)
    if name is None:
        # A probe folder names its backbone's file by absolute path (issue 24).
        raise MissingFileError(
            f"{where}: its backbone's weights {weights} are gone (moved or deleted?): put the "
            f"file back there, then `moderncnn export {where} --format safetensors` writes a "
            "self-contained copy that no longer needs it"
        )
    local = cache_dir() / name
    if not local.is_file():
        raise MissingFileError(
            f"backbone weights {weights!r} are not on this machine ({local}); loading a model "
            f"never downloads: run `moderncnn features --backbone {architecture} --weights "
            f"{weights} ...` once online (or copy the file there), then load again"
        )
    return str(local)


def build_backbone(card: ModelCard, where: str = "model card") -> nn.Module:
    """The headless backbone a backbone card describes, with its weights, checked by hash."""
    weights = card.source.get("weights")
    if isinstance(weights, str) and _has_card(Path(weights)):
        network = load_model(weights).network  # a checkpoint or saved model of ours
        if network is None:
            raise DataError(f"{where}: backbone {weights} is an exported file, not a network")
        network = headless(network)
    else:
        network = headless(build_network(card.replace(kind="backbone"), where))
        if weights is not None:
            load_pretrained(
                network, _offline_weights(str(weights), card.architecture, where),
                model_name=card.architecture, progress=False,
            )  # fmt: skip
    expected = card.source.get("weights_sha256")
    if expected and weights_sha256(network) != expected:
        how = "random initial weights (weights=None)" if weights is None else f"{weights!r}"
        raise DataError(
            f"{where}: the backbone rebuilt from {card.architecture} with {how} is not the one "
            "the features came from; extract features with a weights file (or the trained "
            "checkpoint), or pass the original module as backbone=module"
        )
    return network


def _has_card(path: Path) -> bool:
    """Whether ``path`` is one of our artifacts that carries a card (not a bare state dict)."""
    if path.is_dir():
        return (path / CARD_FILE).is_file() or (path / PROBE_INFO).is_file()
    if path.suffix != ".ckpt" or not path.is_file():
        return False
    checkpoint = read_checkpoint(path)
    return isinstance(checkpoint, Mapping) and (
        "model_card" in checkpoint or "hyper_parameters" in checkpoint
    )


def _from_probe(folder: Path, backbone: nn.Module | None) -> LoadedModel:
    head, card = load_probe(folder)
    if backbone is None:
        backbone = build_backbone(card.parent, str(folder))
    try:
        network = ProbeClassifier(headless(backbone), head, card.head.get("stage"))
    except ConfigError as err:
        raise DataError(f"{folder / PROBE_INFO}: {err}") from None
    return LoadedModel(card, folder, network)


def _from_export(path: Path, runtime: str, precision: str, threads: int | None) -> LoadedModel:
    side = sidecar_path(path)
    if not side.is_file():
        raise MissingFileError(
            f"{side} not found: {path.name}'s card (class names, preprocessing) is kept in it; "
            "copy it beside the model, or export the checkpoint again with `moderncnn export`"
        )
    meta = read_sidecar(side)
    if "card" not in meta:
        raise DataError(f"{side} has no model card: export the checkpoint again")
    card = ModelCard.from_dict(meta["card"], str(side))
    format = format_of(path)  # the extension's, checked against the sidecar and the bytes
    if meta.get("precision") == "int8":
        precision = "int8"
    elif precision == "int8":
        raise ConfigError(f"{path} is an fp32 export; precision 'int8' runs a .int8.onnx file")
    runtime = runtime if format == "onnx" else "torch"
    engine = choose_runtime(runtime, precision) if format == "onnx" else "torchscript"
    expect = _export_signature(meta, card, side)
    run = run_exported(
        path, format, engine if format == "onnx" else runtime, precision, threads, expect
    )

    def logits(images: Tensor) -> Tensor:
        if expect["dynamic_batch"]:
            out = run(images.cpu())
        else:
            out = torch.cat([run(image[None].cpu()) for image in images])  # batch size 1 only
        _check_width(out, expect["outputs"], path)  # TorchScript's graph is not read at load
        return out

    return LoadedModel(card, path, None, runtime, logits, precision, threads, engine)


def _export_signature(meta: Mapping[str, Any], card: ModelCard, side: Path) -> dict[str, Any]:
    """What an export's sidecar says its graph takes and gives, checked against its own card:
    the input size (C, H, W), whether any batch size runs, and the number of classes."""
    size, dynamic = meta.get("input_size"), meta.get("dynamic_batch", False)
    if not (isinstance(size, list) and len(size) == 3) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise DataError(f"{side}: input_size must be three positive ints (C, H, W), got {size!r}")
    if not isinstance(dynamic, bool):
        raise DataError(f"{side}: dynamic_batch must be true or false, got {dynamic!r}")
    pre = card.preprocess
    if size[0] != card.in_chans or (pre is not None and size[1:] != [pre.image_size] * 2):
        shown = "?" if pre is None else pre.image_size
        raise DataError(
            f"{side}: input_size {size} disagrees with its card (in_chans {card.in_chans}, image "
            f"size {shown}); the sidecar was edited: export the model again"
        )
    outputs = card.num_classes if card.kind != "backbone" else None
    return {"input_size": tuple(size), "dynamic_batch": dynamic, "outputs": outputs}


def _check_width(logits: Tensor, outputs: int | None, path: Path) -> None:
    if outputs is not None and (logits.ndim != 2 or logits.shape[1] != outputs):
        raise DataError(
            f"{path} gives {tuple(logits.shape)} logits but its card names {outputs} classes; "
            "the sidecar belongs to another export: export the model again"
        )


def weights_card(weights: Any) -> ModelCard | None:
    """The card of ``weights`` when it is a checkpoint or saved model folder of ours; None for
    a state dict, a URL or a weights name (nothing to read the architecture from)."""
    if not isinstance(weights, str | Path) or "://" in str(weights):
        return None
    path = Path(weights).expanduser()
    if (path / CARD_FILE).is_file() or path.is_file() and _has_card(path):
        return read_card(path)
    return None


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint or saved model folder, without building its network."""
    path = Path(path).expanduser()
    if path.is_dir():
        return ModelCard.from_dict(read_card_json(path / CARD_FILE), str(path / CARD_FILE))
    return card_from_checkpoint(read_checkpoint(path), str(path))


def load_model(
    path: str | Path,
    *,
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    architecture: str | None = None,
    num_classes: int | None = None,
    backbone: nn.Module | None = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a checkpoint, probe folder, saved model folder, export or state dict (see above).

    Args:
        path: the artifact, or ``hf_hub:user/repo`` for a saved model folder on the Hugging
            Face Hub (the ``hub`` extra; from the cache when HF_HUB_OFFLINE is set).
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``
            (:mod:`~moderncnn.inference.runtimes`); chosen for the device on the first call.
        precision: ``fp32``, ``bf16`` (CPUs with bf16 units, GPUs) or ``int8`` (the file
            ``moderncnn export --int8`` wrote).
        threads: intra-op threads (default $MODERNCNN_THREADS, else the usable cores).
        architecture: for a plain state dict (``.pth``/``.safetensors``): its model name.
        num_classes: for a plain state dict: its classifier width.
        backbone: for a probe whose backbone is not a registered model: the module itself.
        **model_kwargs: for a plain state dict: ``in_chans`` and the entry point's arguments.
    """
    path = hub_folder(str(path)) if is_hub_id(path) else Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(
            f"model {str(path)!r} does not exist; give a .ckpt from `moderncnn fit`, a folder "
            "from `moderncnn probe` or `moderncnn export --format safetensors`, or an export"
        )
    if runtime not in RUNTIMES or precision not in PRECISIONS:  # checked early, in one line
        choose_runtime(runtime, precision)
    if threads is not None:
        resolve_threads(threads)
    # By the file's own extension only: a sidecar never makes a file an export (TorchScript
    # is code; a `model.ckpt.json` saying "torchscript" must not send a checkpoint to jit.load).
    if path.suffix.lower() in EXPORT_FORMATS:
        return _from_export(path, runtime, precision, threads)
    if path.is_dir():
        loaded = _from_saved(path) if (path / CARD_FILE).is_file() else _from_probe(path, backbone)
    elif architecture is not None:
        if num_classes is None:
            raise ConfigError(f"{path}: a plain state dict needs num_classes (--num-classes N)")
        loaded = _from_state_dict(path, architecture, num_classes, **model_kwargs)
    else:
        loaded = _from_checkpoint(path)
    loaded.runtime, loaded.precision, loaded.threads = runtime, precision, threads
    return loaded


def save_model(model: Any, out: str | Path, card: ModelCard | None = None) -> Path:
    """Write a saved model folder: ``config.json`` (the card) + ``model.safetensors``.

    ``model`` is a :class:`LoadedModel`, an ``ImageClassifier`` (its card is its own), or any
    ``nn.Module`` with its ``card``. The folder loads offline with :func:`load_model`; it is
    the layout model hubs expect (see the README for publishing it with ``huggingface_hub``).
    """
    network = getattr(model, "network", None) or getattr(model, "model", None) or model
    card = card or getattr(model, "card", None)
    if not isinstance(network, nn.Module) or not isinstance(card, ModelCard):
        raise ConfigError("save_model needs a network and its ModelCard (card=...)")
    out = Path(out)
    _check_saved_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    card = card.replace(source={**card.source, "artifact": "saved"})
    atomic_write_text(out / CARD_FILE, json.dumps(card.to_dict(), indent=1) + "\n")
    return out


def _check_saved_folder(out: Path) -> None:
    """Refuse to write into a file, or into a folder of other files (a project whose own
    ``config.json`` would be replaced): only a new, empty or saved model folder is ours."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; a saved model is a folder: choose another --output")
    if not out.is_dir() or not any(out.iterdir()):
        return
    card = out / CARD_FILE
    try:
        ours = json.loads(card.read_text(encoding="utf-8")).get("format") == CARD_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        ours = False
    if not ours:
        raise OutputError(
            f"{out} is a folder of other files, not a saved model (no {CARD_FILE} model card); "
            f"writing it would replace its {CARD_FILE} and {WEIGHTS_FILE}: choose a new or "
            "empty folder"
        )
