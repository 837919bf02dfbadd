"""The model card: what a trained model *is*, in one place that every command reads and writes.

A card holds everything needed to rebuild a network and feed it images: the registered
architecture and its keyword arguments, the number of classes and input channels, the class
names, the evaluation preprocessing, and where the model came from (a checkpoint, a probe on a
backbone, an export). It never holds a ``weights`` source: the trained weights are in the file
the card travels with. One :meth:`ModelCard.to_dict` / :meth:`ModelCard.from_dict` pair writes
and reads it identically in a Lightning checkpoint (its ``model_card`` entry), an export
sidecar (``model.onnx.json``), a saved model folder (``config.json``), a probe folder
(``probe.json``) and a feature cache's manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision.transforms import v2

from .errors import DataError
from .pixels import ToGrey, normalize, pixel_transform

__all__ = ["CARD_FORMAT", "KINDS", "ModelCard", "Preprocess", "ToGrey", "read_card_json"]

CARD_FORMAT = "moderncnn-card/1"
# classifier: a network with its own head; backbone: a headless feature extractor;
# probe: a head trained on a backbone's cached features (the backbone is the card's parent).
KINDS = ("classifier", "backbone", "probe")
# Images at most this big are taken whole (already framed, like CIFAR's); larger ones get the
# ImageNet evaluation recipe: resize the short side to size / 0.875, centre-crop.
SMALL_IMAGE = 64
CROP_FRACTION = 0.875
# Bounds on what a card (a JSON file from anywhere) may ask for: an image side (a 4096 x 4096
# RGB input is 200 MB in float32 before the first layer), nesting (a real card is < 10 deep;
# Python's recursion stops near 1000) and a probe head's sizes.
MAX_IMAGE_SIZE = 4096
MAX_CARD_DEPTH = 64
MAX_HEAD_SIZE = 2**20


@dataclass(frozen=True)
class Preprocess:
    """The evaluation transform: resize (and centre-crop), scale to [0, 1], normalise.

    Attributes:
        image_size: side of the square the network sees.
        resize_size: short side before the centre crop; None resizes straight to image_size.
        mean: per-channel mean of [0, 1] pixels, subtracted; its length is the channel count
            (1: images are converted to 8-bit grey first, 3: RGB).
        std: per-channel standard deviation, divided by.
    """

    image_size: int
    resize_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise DataError(
                f"preprocess image_size must be an int from 1 to {MAX_IMAGE_SIZE}, got "
                f"{self.image_size!r}"
            )
        if self.resize_size is not None and (
            not isinstance(self.resize_size, int)
            or not self.image_size <= self.resize_size <= 2 * MAX_IMAGE_SIZE
        ):
            raise DataError(
                f"preprocess resize_size must be None or an int from image_size "
                f"({self.image_size}) to {2 * MAX_IMAGE_SIZE}, got {self.resize_size!r}"
            )
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise DataError(
                f"preprocess mean and std need 1 or 3 values each, got mean={list(self.mean)}, "
                f"std={list(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise DataError(f"preprocess std must be finite and > 0, got {list(self.std)}")

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    @classmethod
    def for_size(cls, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Preprocess:
        """ImageNet-style resize-and-crop for large sizes; a plain resize for small ones."""
        resize = None if image_size <= SMALL_IMAGE else round(image_size / CROP_FRACTION)
        return cls(image_size, resize, _floats(mean), _floats(std))

    @classmethod
    def of_datamodule(cls, data: Any) -> Preprocess | None:
        """A data module's evaluation transform, from its ``image_size``, ``resize_size``,
        ``mean`` and ``std`` attributes (None when it lacks one of the three required)."""
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        size = getattr(data, "image_size", None)
        if mean is None or std is None or size is None:
            return None
        resize = getattr(data, "resize_size", None)
        side = int(size[0] if isinstance(size, tuple | list) else size)
        return cls(side, None if resize is None else int(resize), _floats(mean), _floats(std))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "preprocess") -> Preprocess:
        if not isinstance(values, Mapping):
            raise DataError(f"{where}: preprocess must be a mapping, got {values!r:.80}")
        try:
            resize = values.get("resize_size")
            return cls(
                int(values["image_size"]),
                None if resize is None else int(resize),
                _floats(values["mean"]),
                _floats(values["std"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            if isinstance(err, DataError):
                raise DataError(f"{where}: {err}") from None
            raise DataError(
                f"{where}: not a preprocessing record (image_size, resize_size, mean, std): {err}"
            ) from err

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    def transform(self) -> v2.Compose:
        """PIL image (any mode ``load_image`` gives) -> normalised float tensor."""
        size = self.image_size
        if self.resize_size is None:
            geometry = [v2.Resize((size, size), antialias=True)]
        else:
            geometry = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(size)]
        return pixel_transform(geometry, self.in_chans, self.mean, self.std)

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images (N x C x H x W) -> normalised, as :meth:`transform` ends."""
        return normalize(images, self.mean, self.std)


def _floats(values: Any) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise DataError(f"expected a list of numbers, got {values!r}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"expected a list of numbers, got {list(values)!r:.80}") from None
    if not all(math.isfinite(v) for v in out):
        raise DataError(f"expected finite numbers, got {list(values)}")
    return out


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild and feed a trained model (see the module docstring).

    Attributes:
        architecture: a registered model name (``moderncnn.list_models()``), or for a network
            that is not one, its ``module.Class`` (then it cannot be rebuilt from the card alone).
        num_classes: width of the classifier (0: a headless backbone).
        in_chans: image channels the network takes.
        model_kwargs: the entry point's other keyword arguments (widths, depths, ...).
        class_names: one name per output, or None when unknown.
        preprocess: the evaluation transform, or None when unknown.
        kind: ``"classifier"``, ``"backbone"`` or ``"probe"``.
        parent: for a probe, the card of the backbone its features came from.
        head: for a probe: ``num_features``, ``hidden`` (MLP width or None), ``stage``.
        source: where it came from: ``artifact`` (ckpt, probe, onnx, ...), for a backbone its
            ``weights`` (a file, URL or name) and ``weights_sha256``, ...
        metrics: what is known of its accuracy (e.g. ``{"test_acc": 0.91}``).
    """

    architecture: str
    num_classes: int
    in_chans: int = 3
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    kind: str = "classifier"
    parent: ModelCard | None = None
    head: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_fields()
        self._tidy()
        self._check_agreement()

    def _check_fields(self) -> None:
        """Each field of the type and range a card has (a card is a JSON file from anywhere)."""
        if not isinstance(self.architecture, str) or not self.architecture:
            raise DataError(f"card architecture must be a model name, got {self.architecture!r}")
        for key in ("num_classes", "in_chans"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DataError(f"card {key} must be an int >= 0, got {value!r}")
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise DataError(f"card kind must be one of {KINDS}, got {self.kind!r}")
        if self.parent is not None and not isinstance(self.parent, ModelCard):
            raise DataError(f"card parent must be a card, got {type(self.parent).__name__}")
        if self.kind == "probe":
            _check_head(self.head)

    def _tidy(self) -> None:
        """No ``weights`` source in the kwargs; class names as a tuple of strings."""
        if "weights" in self.model_kwargs:
            # The trained weights are in the file the card travels with; a `weights` source
            # here would make loading download or read the file the training started from.
            kwargs = {k: v for k, v in self.model_kwargs.items() if k != "weights"}
            object.__setattr__(self, "model_kwargs", kwargs)
        if self.class_names is not None:
            names = tuple(str(name) for name in self.class_names)
            object.__setattr__(self, "class_names", names)

    def _check_agreement(self) -> None:
        """The class names and the preprocessing agree with the network's outputs and input."""
        if self.class_names is not None:
            names = self.class_names
            outputs = self.num_classes if self.kind != "backbone" else len(names)
            if len(names) != outputs:
                raise DataError(f"card has {len(names)} class names for {self.num_classes} classes")
        if self.preprocess is not None and self.preprocess.in_chans != self.in_chans:
            raise DataError(
                f"card preprocess has {self.preprocess.in_chans} channels (mean "
                f"{list(self.preprocess.mean)}) but the network takes in_chans={self.in_chans}"
            )

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (the card itself is frozen)."""
        return replace(self, **changes)

    def names(self) -> list[str]:
        """The class names, or ``class_0``, ``class_1``, ... when unknown."""
        if self.class_names is not None:
            return list(self.class_names)
        return [f"class_{i}" for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values: the one serialised form of a card."""
        return {
            "format": CARD_FORMAT,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "model_kwargs": _plain(dict(self.model_kwargs)),
            "class_names": None if self.class_names is None else list(self.class_names),
            "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
            "kind": self.kind,
            "parent": None if self.parent is None else self.parent.to_dict(),
            "head": _plain(dict(self.head)),
            "source": _plain(dict(self.source)),
            "metrics": _plain(dict(self.metrics)),
        }

    @classmethod
    def from_hparams(cls, hparams: Any, where: str = "hyper_parameters") -> ModelCard:
        """The card of an ``ImageClassifier``'s ``__init__`` arguments (a checkpoint's
        ``hyper_parameters``): ``model``, ``num_classes``, ``in_chans``, ``model_kwargs``,
        ``class_names``, ``preprocess``; other keys (optimiser, schedule, ...) are not the
        model's and are ignored."""
        if not isinstance(hparams, Mapping):
            raise DataError(f"{where}: no hyper_parameters mapping; is it an ImageClassifier's?")
        model = hparams.get("model")
        if not isinstance(model, str):
            raise DataError(
                f"{where}: the model was a Python nn.Module, not a registered model name, so it "
                "cannot be rebuilt from the file; load its state dict into the module in Python"
            )
        pre = hparams.get("preprocess")
        names = hparams.get("class_names")
        try:
            return cls(
                architecture=model,
                num_classes=hparams.get("num_classes", 0),
                in_chans=hparams.get("in_chans", 3),
                model_kwargs=_mapping(hparams.get("model_kwargs"), "model_kwargs"),
                class_names=None if names is None else tuple(_names(names)),
                preprocess=None if pre is None else Preprocess.from_dict(pre, where),
            )
        except DataError as err:
            text = str(err)
            raise DataError(text if text.startswith(where) else f"{where}: {text}") from None

    @classmethod
    def from_dict(cls, values: Any, where: str = "model card") -> ModelCard:
        """The card ``to_dict`` wrote; ``where`` (a file name) is named in every error."""
        if not isinstance(values, Mapping):
            raise DataError(f"{where}: a model card is a mapping, got {type(values).__name__}")
        if _depth(values) > MAX_CARD_DEPTH:
            raise DataError(
                f"{where}: nested more than {MAX_CARD_DEPTH} levels deep, far beyond any model "
                "card; the file was crafted or damaged: save the model again"
            )
        if values.get("format", CARD_FORMAT) != CARD_FORMAT:
            raise DataError(
                f"{where}: card format {values.get('format')!r} is not {CARD_FORMAT!r}; it was "
                "written by another version of moderncnn"
            )
        try:
            pre = values.get("preprocess")
            parent = values.get("parent")
            names = values.get("class_names")
            return cls(
                architecture=values["architecture"],
                num_classes=values["num_classes"],
                in_chans=values.get("in_chans", 3),
                model_kwargs=_mapping(values.get("model_kwargs"), "model_kwargs"),
                class_names=None if names is None else tuple(_names(names)),
                preprocess=None if pre is None else Preprocess.from_dict(pre, where),
                kind=values.get("kind", "classifier"),
                parent=None if parent is None else cls.from_dict(parent, f"{where} (parent)"),
                head=_mapping(values.get("head"), "head"),
                source=_mapping(values.get("source"), "source"),
                metrics=_mapping(values.get("metrics"), "metrics"),
            )
        except KeyError as err:
            raise DataError(f"{where}: the model card has no {err.args[0]!r}") from None
        except DataError as err:
            text = str(err)
            raise DataError(text if text.startswith(where) else f"{where}: {text}") from None


def _depth(value: Any) -> int:
    """How deeply ``value``'s mappings and lists nest (iteratively: a crafted value may nest
    deeper than Python's recursion reaches); stops counting past :data:`MAX_CARD_DEPTH`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_CARD_DEPTH:
            break
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _size(value: Any, key: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_HEAD_SIZE:
        raise DataError(f"card head {key} must be an int from 1 to {MAX_HEAD_SIZE}, got {value!r}")


def _check_head(head: Mapping[str, Any]) -> None:
    """A probe's head: ``num_features`` (and ``hidden``, the MLP width or None) are sizes."""
    _size(head.get("num_features"), "num_features")
    _size(head.get("hidden"), "hidden", optional=True)
    stage = head.get("stage")
    if stage is not None and not isinstance(stage, str | int):
        raise DataError(f"card head stage must be a stage name or index, got {stage!r}")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"card {key} must be a mapping, got {value!r}")
    return dict(value)


def _names(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DataError(f"card class_names must be a list of names, got {value!r}")
    return [str(name) for name in value]


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a card compares equal after a JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_card_json(path: Path, what: str = "card", fix: str = "") -> dict[str, Any]:
    """The JSON object in one of our files (a card: ``config.json``, ``probe.json``; an export's
    sidecar); one-line errors naming ``path`` (and ``what`` it is, with ``fix``: what to do) for
    an unreadable, malformed or hostile file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable {what} ({err}){fix}") from err
    except (RecursionError, ValueError) as err:  # nested 100k deep; an int of 5000 digits
        raise DataError(f"{path}: not a {what} moderncnn writes ({type(err).__name__})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: a {what} is a JSON object, got {type(value).__name__}")
    return value
