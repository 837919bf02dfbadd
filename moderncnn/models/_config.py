"""Variants as data (timm's ``default_cfg`` idea): what a registered name builds, how its
images are prepared, which pretrained weights exist for it and where its heads are.

Each family file declares a table of :class:`VariantConfig` beside its entry points; the
registry (:mod:`._registry`) keeps them, so ``get_variant_config("resnet50")`` answers without
building anything. Nothing here imports file formats or downloads.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "PretrainedWeights",
    "SMALL_IMAGE_SUFFIX",
    "TIMM_URL_ROOT",
    "TORCHVISION_URL_ROOT",
    "VariantConfig",
    "small_image_twin",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow-trained Inceptions (and timm's ports of them) take pixels scaled to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
TORCHVISION_URL_ROOT = "https://download.pytorch.org/models/"
# timm's GitHub releases: file names carry a SHA-256 prefix, as torchvision's do. timm >= 0.9
# serves the same weights from the Hugging Face hub (``hub_id``), all named model.safetensors.
TIMM_URL_ROOT = "https://github.com/rwightman/pytorch-image-models/releases/download/"
SMALL_IMAGE_SUFFIX = "_cifar"
SMALL_IMAGE_SIZE = 32
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's "<name>-<sha256 prefix>.<ext>"


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint: where it is and how its images were prepared.

    Attributes:
        file_name: the file's name; torch.hub style, ``<name>-<sha256 prefix>.<ext>``.
        crop_size: evaluation: resize the short side to ``resize_size``, centre-crop this.
        resize_size: see ``crop_size``.
        transform_input: the weights expect ``mean``/``std`` normalisation other than
            ImageNet's, and the model can re-normalise ImageNet-normalised input itself:
            :func:`~moderncnn.models.pretrained.load_pretrained` turns it on, so these weights
            take the same input as every other model (torchvision does the same).
        aux_trained: False where the auxiliary heads were never trained (torchvision's GoogLeNet).
        url_root: the URL without the file name.
        source: who publishes the file ("torchvision", "timm").
        mean, std: the normalisation the weights themselves were trained with, i.e. what the
            first convolution expects when ``transform_input`` is off.
        interpolation: of the evaluation resize.
        label_offset: leading classifier rows to drop on load (1: the TensorFlow files'
            "background" class, 1001 outputs for 1000 classes).
        hub_id: the same weights on the Hugging Face hub, as timm names them.
    """

    file_name: str
    crop_size: int = 224
    resize_size: int = 256
    transform_input: bool = False
    aux_trained: bool = True
    url_root: str = TORCHVISION_URL_ROOT
    source: str = "torchvision"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    label_offset: int = 0
    hub_id: str | None = None

    @property
    def url(self) -> str:
        return self.url_root + self.file_name

    @property
    def hash_prefix(self) -> str | None:
        """The SHA-256 prefix in the file name (checked on download and on every load)."""
        found = _HASH_IN_NAME.search(self.file_name)
        return found.group(1) if found else None

    @property
    def input_mean(self) -> tuple[float, ...]:
        """The mean to normalise images with once loaded (see ``transform_input``)."""
        return IMAGENET_MEAN if self.transform_input else self.mean

    @property
    def input_std(self) -> tuple[float, ...]:
        return IMAGENET_STD if self.transform_input else self.std


@dataclass(frozen=True)
class VariantConfig:
    """A registered model name as data.

    Attributes:
        name: the registered name (``create_model(name)``).
        family: the family file / model class it builds ("resnet", "inception_v4", ...).
        model_args: the constructor arguments the entry point fixes (depths, widths, block
            type); ``create_model``'s keyword arguments override them.
        stem: "imagenet" or "cifar" (the small-image stem); passed to the constructor too.
        input_size: C, H, W the variant is trained at.
        crop_size, resize_size: evaluation transform (the default weights' when it has any).
        mean, std: the normalisation to give the model's input: ImageNet's for every variant,
            also those whose weights were trained otherwise (see
            :attr:`PretrainedWeights.transform_input`).
        weights: tag -> :class:`PretrainedWeights`; the first is the default (``"imagenet"``).
        classifier: the final classifier's module name ("fc", "classifier", ...).
        aux_heads: module names of the auxiliary heads ("aux1", "aux2"), when built.
        description: one line, the entry point's docstring.
        small_image_of: for a ``*_cifar`` twin, the variant it was made from.
    """

    name: str
    family: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    stem: str = "imagenet"
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: Mapping[str, PretrainedWeights] = field(default_factory=dict)
    classifier: str = "fc"
    aux_heads: tuple[str, ...] = ()
    description: str = ""
    small_image_of: str | None = None

    def __post_init__(self) -> None:
        # Defaults follow the default weights, else the input size (crop 87.5%, as torchvision).
        default = self.default_weights
        side = self.input_size[-1]
        if self.crop_size is None:
            object.__setattr__(self, "crop_size", default.crop_size if default else side)
        if self.resize_size is None:
            resize = default.resize_size if default else _resize_for(self.crop_size)
            object.__setattr__(self, "resize_size", resize)

    @property
    def default_weights(self) -> PretrainedWeights | None:
        return next(iter(self.weights.values()), None)

    def build_args(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments: the stem and ``model_args``, then the caller's ``kwargs``."""
        return {"stem": self.stem, **self.model_args} | dict(kwargs)


def _resize_for(crop: int) -> int:
    """Short side before a centre crop: 256 for 224 (87.5%), none for small images."""
    return crop if crop <= SMALL_IMAGE_SIZE else round(crop / 0.875)


def small_image_twin(config: VariantConfig) -> VariantConfig:
    """The ``*_cifar`` variant of ``config``, by one rule for every family.

    The same network with the small-image stem (stride 1, no stem pooling), for 32 x 32 and
    28 x 28 images: the ImageNet stems shrink the image 4-8x before the first block. No
    pretrained weights: the stem's shapes and the maps' statistics differ.
    """
    return dataclasses.replace(
        config,
        name=config.name + SMALL_IMAGE_SUFFIX,
        stem="cifar",
        input_size=(config.input_size[0], SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE),
        crop_size=None,
        resize_size=None,
        weights={},
        description=(
            f"{config.description.rstrip('.')}, with the small-image stem (stride 1, no stem "
            "pooling), for 32 x 32 (and 28 x 28) images."
        ),
        small_image_of=config.name,
    )
