"""Pretrained weights: torchvision's ImageNet checkpoints by name, or any local file or URL.

``create_model("resnet50", weights="imagenet")`` downloads (once) torchvision's file and loads
it; our state-dict keys are torchvision's, so its files load unchanged. ``weights`` may be:

- ``"imagenet"`` / ``"DEFAULT"``: torchvision's best ImageNet-1k weights for the architecture,
  or a tag such as ``"IMAGENET1K_V1"`` (see :data:`TORCHVISION_WEIGHTS`);
- an ``https://`` URL (cached in ``$TORCH_HOME/hub/checkpoints``);
- a local ``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors`` file (see :mod:`.checkpoint`).

A checkpoint whose classifier has another number of classes loads everything but the
classifier, which stays freshly initialised (a warning names the skipped keys); so does a
backbone saved without a classifier (``reset_classifier(0)``); any other missing, unexpected
or mis-shaped key is an error.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torch import Tensor, nn

from moderncnn.io.checkpoint import read_state_dict
from moderncnn.io.download import cached_download, check_hash, hash_prefix

__all__ = [
    "LoadReport",
    "PretrainedWeights",
    "TORCHVISION_WEIGHTS",
    "find_pretrained",
    "load_pretrained",
    "remap_legacy_keys",
    "resolve_weights",
]

log = logging.getLogger(__name__)
URL_ROOT = "https://download.pytorch.org/models/"
# Modules whose keys belong to the (possibly re-sized) classifiers rather than the backbone:
# the final classifier and the auxiliary heads' last layers.
CLASSIFIER_PREFIXES = ("fc.", "classifier.")
HEAD_PREFIXES = (*CLASSIFIER_PREFIXES, "aux1.fc2.", "aux2.fc2.", "AuxLogits.fc.")
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


@dataclass(frozen=True)
class PretrainedWeights:
    """One torchvision checkpoint: where it is and how its images were preprocessed."""

    file_name: str
    crop_size: int = 224  # evaluation: resize the short side to resize_size, centre-crop
    resize_size: int = 256
    transform_input: bool = False  # TensorFlow-ported Inception weights expect [-1, 1] input
    aux_trained: bool = True  # torchvision's GoogLeNet aux heads were never trained

    @property
    def url(self) -> str:
        return URL_ROOT + self.file_name


_INCEPTION = {"transform_input": True, "crop_size": 299, "resize_size": 342}
# architecture -> tag -> weights; the first tag is torchvision's DEFAULT (checked in
# tests/transfer against the installed torchvision's *_Weights enums).
TORCHVISION_WEIGHTS: dict[str, dict[str, PretrainedWeights]] = {
    "resnet18": {"IMAGENET1K_V1": PretrainedWeights("resnet18-f37072fd.pth")},
    "resnet34": {"IMAGENET1K_V1": PretrainedWeights("resnet34-b627a593.pth")},
    "resnet50": {
        "IMAGENET1K_V2": PretrainedWeights("resnet50-11ad3fa6.pth", resize_size=232),
        "IMAGENET1K_V1": PretrainedWeights("resnet50-0676ba61.pth"),
    },
    "resnet101": {
        "IMAGENET1K_V2": PretrainedWeights("resnet101-cd907fc2.pth", resize_size=232),
        "IMAGENET1K_V1": PretrainedWeights("resnet101-63fe2227.pth"),
    },
    "resnet152": {
        "IMAGENET1K_V2": PretrainedWeights("resnet152-f82ba261.pth", resize_size=232),
        "IMAGENET1K_V1": PretrainedWeights("resnet152-394f9c45.pth"),
    },
    "densenet121": {"IMAGENET1K_V1": PretrainedWeights("densenet121-a639ec97.pth")},
    "densenet161": {"IMAGENET1K_V1": PretrainedWeights("densenet161-8d451a50.pth")},
    "densenet169": {"IMAGENET1K_V1": PretrainedWeights("densenet169-b2777c0a.pth")},
    "densenet201": {"IMAGENET1K_V1": PretrainedWeights("densenet201-c1103571.pth")},
    "googlenet": {
        "IMAGENET1K_V1": PretrainedWeights(
            "googlenet-1378be20.pth", transform_input=True, aux_trained=False
        )
    },
    "inception_v3": {
        "IMAGENET1K_V1": PretrainedWeights("inception_v3_google-0cc3c7bd.pth", **_INCEPTION)
    },
}
DEFAULT_ALIASES = ("imagenet", "default", "imagenet1k")


class LoadReport(NamedTuple):
    """What :func:`load_pretrained` did besides loading matching tensors."""

    path: Path
    fresh_head: list[str]  # checkpoint keys of a classifier of another shape, not loaded
    fresh_aux: list[str]  # model keys of auxiliary heads the checkpoint lacks
    adapted: list[str]  # stem weights summed/repeated to the model's input channels


def find_pretrained(model_name: str | None, weights: str) -> PretrainedWeights | None:
    """The table entry that ``weights`` names (a tag, an alias, or one of its file names)."""
    file_name = Path(weights).name
    for table in TORCHVISION_WEIGHTS.values():
        for entry in table.values():
            if file_name == entry.file_name:
                return entry
    table = TORCHVISION_WEIGHTS.get(model_name or "")
    if table is None:
        return None
    tag = weights.rsplit(".", 1)[-1]  # "ResNet50_Weights.IMAGENET1K_V2" -> "IMAGENET1K_V2"
    if tag.lower() in DEFAULT_ALIASES:
        return next(iter(table.values()))
    return table.get(tag.upper())


def _is_named(weights: str) -> bool:
    return "/" not in weights and "." not in weights.replace("_Weights.", "")


def resolve_weights(
    weights: str | Path, model_name: str | None = None, progress: bool = True
) -> Path:
    """The local file that ``weights`` names, downloading it into the cache if needed."""
    text = str(weights)
    if text.startswith(("https://", "http://")):
        return cached_download(text, progress)
    entry = find_pretrained(model_name, text)
    if _is_named(text) and not Path(text).is_file():
        if entry is None:
            tags = list(TORCHVISION_WEIGHTS.get(model_name or "", {}))
            hint = (
                f"{model_name} has 'imagenet' / 'DEFAULT' and {', '.join(map(repr, tags))}"
                if tags
                else f"named weights exist for {', '.join(TORCHVISION_WEIGHTS)}"
            )
            raise ValueError(
                f"no pretrained weights {text!r} for model {model_name!r}: {hint}. Otherwise "
                "pass a .pth / .safetensors file or an https:// URL"
            )
        return cached_download(entry.url, progress)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {text!r} does not exist; pass a file, an https:// URL, or a name "
            f"such as 'imagenet'"
        )
    if entry is not None and hash_prefix(path.name):
        check_hash(path)  # a torchvision file placed by hand: check it like a download
    return path


_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def remap_legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename DenseNet's pre-0.4 keys (``denselayer1.norm.1.weight`` -> ``norm1.weight``).

    torchvision's published DenseNet files still use the old names; its loader renames them
    with this same pattern (torchvision/models/densenet.py, ``_load_state_dict``).
    """
    renamed = {}
    for key, value in state.items():
        found = _LEGACY_DENSENET.match(key)
        renamed[found.group(1) + found.group(2) if found else key] = value
    return renamed


def _adapt_stem(
    state: dict[str, Tensor], own: dict[str, Tensor]
) -> tuple[dict[str, Tensor], list[str]]:
    """Fit RGB stem weights to a model with other input channels (timm's adapt_input_conv)."""
    adapted = []
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.ndim != 4 or value.shape == target.shape:
            continue
        other_dims = (value.shape[0], *value.shape[2:]) == (target.shape[0], *target.shape[2:])
        if value.shape[1] == 3 and other_dims:
            chans = target.shape[1]
            if chans == 1:  # grey = the sum of the RGB filters' responses to equal R, G, B
                state[key] = value.sum(dim=1, keepdim=True)
            else:  # repeat RGB and rescale so the activations keep their magnitude
                state[key] = value.repeat(1, (chans + 2) // 3, 1, 1)[:, :chans] * (3 / chans)
            adapted.append(key)
    return state, adapted


def _head_keys(state: dict[str, Tensor], own: dict[str, Tensor]) -> list[str]:
    """Classifier keys in ``state`` that do not fit the model (another class count, or none)."""
    head = [k for k in state if k.startswith(HEAD_PREFIXES)]
    if any(k not in own or own[k].shape != state[k].shape for k in head):
        return head
    return []


def _check_keys(model_name: str, path: Path, state: dict, own: dict, allowed: set[str]) -> None:
    # Files from before PyTorch 0.4 (torchvision's DenseNets) have no BatchNorm step counters;
    # BatchNorm fills them in itself on load.
    missing = [
        k
        for k in own
        if k not in state and k not in allowed and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    found = {"missing": missing, "unexpected": unexpected, "mis-shaped": shapes}
    problems = [
        f"{len(keys)} {what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
        for what, keys in found.items()
        if keys
    ]
    if problems:
        raise ValueError(
            f"{path} does not fit {model_name}: " + "; ".join(problems) + ". Is it a checkpoint "
            "of this architecture (e.g. resnet18, not resnet18_cifar, whose stem differs)?"
        )


def load_pretrained(
    model: nn.Module,
    weights: str | Path,
    *,
    model_name: str | None = None,
    transform_input: bool | None = None,
    progress: bool = True,
) -> LoadReport:
    """Load ``weights`` into ``model`` in place (see the module docstring for what it accepts).

    Args:
        model: a moderncnn (or torchvision) model with torchvision's key names.
        weights: a name (``"imagenet"``), an ``https://`` URL, or a local file.
        model_name: the registered architecture name, to look named weights up.
        transform_input: for GoogLeNet / Inception v3; None turns it on for torchvision's
            ImageNet files, which expect ``(x - 0.5) / 0.5`` input (torchvision does the same).
        progress: show a progress bar while downloading.
    """
    name = model_name or type(model).__name__
    path = resolve_weights(weights, model_name, progress=progress)
    entry = find_pretrained(model_name, str(path))
    own = model.state_dict()
    state, adapted = _adapt_stem(remap_legacy_keys(read_state_dict(path)), own)
    # Aux heads in the file but not in the model (aux_logits=False) are simply not needed.
    state = {k: v for k, v in state.items() if not (k.startswith(AUX_PREFIXES) and k not in own)}
    fresh_head = _head_keys(state, own)
    for key in fresh_head:
        del state[key]
    # A backbone saved without its classifier (reset_classifier(0)) gives a fresh head too.
    headless = (
        not fresh_head
        and not any(k.startswith(CLASSIFIER_PREFIXES) for k in state)
        and any(k.startswith(CLASSIFIER_PREFIXES) for k in own)
    )
    fresh = fresh_head or headless
    head_names = {k for k in own if k.startswith(HEAD_PREFIXES)} if fresh else set()
    # An aux head the file has no tensor of at all stays as initialised (a file saved from a
    # model without aux heads); a partly present one is an error like any other missing key.
    in_file = {k.split(".", 1)[0] for k in state}
    fresh_aux = [k for k in own if k.startswith(AUX_PREFIXES) and k.split(".", 1)[0] not in in_file]
    _check_keys(name, path, state, own, head_names | set(fresh_aux))
    model.load_state_dict(state, strict=False)

    if fresh_head:
        warnings.warn(
            f"{path.name}: its classifier does not fit {name}'s (another number of classes), "
            f"so it was not loaded and the model keeps a freshly initialised head; skipped "
            f"{', '.join(fresh_head)}",
            stacklevel=2,
        )
    if headless:
        log.info("%s has no classifier; %s keeps a freshly initialised one", path.name, name)
    if fresh_aux:
        log.info("%s has no aux-head weights; %d tensors stay fresh", path.name, len(fresh_aux))
    untrained_aux = entry is not None and not entry.aux_trained
    if untrained_aux and any(k.startswith(AUX_PREFIXES) for k in state):
        log.info("%s: its aux heads were never trained; train them before using them", path.name)
    if adapted:
        log.info("%s: adapted %s to the model's input channels", path.name, ", ".join(adapted))
    if entry is not None and entry.transform_input and hasattr(model, "transform_input"):
        rgb = not adapted
        model.transform_input = rgb if transform_input is None else transform_input
    return LoadReport(path, fresh_head, fresh_aux, adapted)
