"""Pretrained weights: published ImageNet checkpoints by name, or any local file or URL.

``create_model("resnet50", weights="imagenet")`` downloads (once) torchvision's file and loads
it; our state-dict keys are torchvision's (timm's for Inception-v4 and Inception-ResNet-v2),
so their files load unchanged. ``weights`` may be:

- ``"imagenet"`` / ``"DEFAULT"``: the variant's default ImageNet-1k weights, or a tag such as
  ``"IMAGENET1K_V1"`` (the tables: ``get_variant_config(name).weights``);
- an ``https://`` URL (cached in ``$TORCH_HOME/hub/checkpoints``);
- a local ``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors`` file (see :mod:`.checkpoint`).

The model names its class-count-dependent layers (``model.head_modules()``: the classifier and
each aux head's last layer) and its aux heads (``model.aux_modules()``). A checkpoint whose
heads have another number of classes loads everything but them, which stay freshly initialised
(a warning names the skipped keys); so does a backbone saved without a classifier
(``reset_classifier(0)``). A model built without a head (``num_classes=0``) or without aux heads
simply does not need the file's. Any other missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from torch import Tensor, nn

from moderncnn.io.checkpoint import read_state_dict
from moderncnn.io.download import cached_download, check_hash, hash_prefix
from moderncnn.io.errors import ConfigError, DataError

from ._config import PretrainedWeights
from ._registry import variant_configs

__all__ = [
    "LoadReport",
    "PretrainedWeights",
    "TORCHVISION_WEIGHTS",
    "find_pretrained",
    "load_pretrained",
    "pretrained_weights",
    "remap_legacy_keys",
    "resolve_weights",
]

log = logging.getLogger(__name__)
DEFAULT_ALIASES = ("imagenet", "default", "imagenet1k")
# Looked for on a model that is not a moderncnn ClassifierModel (no head_modules()).
FOREIGN_CLASSIFIERS = ("fc", "classifier", "head", "last_linear", "classif")


def pretrained_weights() -> dict[str, dict[str, PretrainedWeights]]:
    """Architecture -> tag -> weights, from every variant table; the first tag is the default."""
    return {name: dict(c.weights) for name, c in variant_configs().items() if c.weights}


# torchvision's files only (checked in tests/transfer against the installed torchvision's
# *_Weights enums); the variant tables (get_variant_config(name).weights) hold every source.
TORCHVISION_WEIGHTS: dict[str, dict[str, PretrainedWeights]] = {
    name: table
    for name, table in pretrained_weights().items()
    if all(w.source == "torchvision" for w in table.values())
}


class LoadReport(NamedTuple):
    """What :func:`load_pretrained` did besides loading matching tensors."""

    path: Path
    fresh_head: list[str]  # checkpoint keys of a classifier of another shape, not loaded
    fresh_aux: list[str]  # model keys of auxiliary heads the checkpoint lacks
    adapted: list[str]  # stem weights summed/repeated to the model's input channels
    unneeded: tuple[str, ...] = ()  # checkpoint keys of heads the model was built without


def find_pretrained(model_name: str | None, weights: str) -> PretrainedWeights | None:
    """The table entry that ``weights`` names (a tag, an alias, or one of its file names)."""
    file_name = Path(weights).name
    tables = pretrained_weights()
    for table in tables.values():
        for entry in table.values():
            if file_name == entry.file_name:
                return entry
    table = tables.get(model_name or "")
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
            tables = pretrained_weights()
            tags = list(tables.get(model_name or "", {}))
            hint = (
                f"{model_name} has 'imagenet' / 'DEFAULT' and {', '.join(map(repr, tags))}"
                if tags
                else f"named weights exist for {', '.join(tables)}"
            )
            raise ConfigError(
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


def _under(key: str, modules: list[str] | tuple[str, ...]) -> bool:
    return any(key.startswith(m + ".") for m in modules)


def _heads(model: nn.Module, model_name: str | None) -> tuple[list[str], list[str]]:
    """(head layers, every aux head the model's class declares) of ``model``.

    A moderncnn model says (``head_modules()``, ``aux_head_names``); another one (torchvision's,
    a user's) is asked by its variant table's names, else its usual classifier attributes.
    """
    if callable(getattr(model, "head_modules", None)):
        return list(model.head_modules()), list(getattr(model, "aux_head_names", ()))
    config = variant_configs().get(model_name or "")
    names = (config.classifier,) if config else FOREIGN_CLASSIFIERS
    heads = [n for n in names if isinstance(getattr(model, n, None), nn.Module)][:1]
    aux = list(config.aux_heads) if config else []
    for name in aux:
        modules = getattr(model, name, nn.Module()).named_modules()
        linears = [n for n, m in modules if isinstance(m, nn.Linear)]
        heads += [f"{name}.{linears[-1]}"] if linears else []
    return heads, aux


def _drop_label_offset(
    state: dict[str, Tensor], own: dict[str, Tensor], heads: list[str], offset: int
) -> None:
    """Drop a TensorFlow file's leading "background" class rows where the model has none."""
    for head in heads:
        weight = state.get(f"{head}.weight")
        target = own.get(f"{head}.weight")
        if weight is None or target is None or weight.shape[0] != target.shape[0] + offset:
            continue
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in state:
                state[key] = state[key][offset:]


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
    channels = _channel_difference(state, own)
    if channels is not None and not missing and not unexpected and len(shapes) == 1:
        file_chans, model_chans = channels
        raise DataError(
            f"{path} does not fit {model_name}: its first convolution takes {file_chans}-channel "
            f"images ({'grey' if file_chans == 1 else 'colour' if file_chans == 3 else 'other'}), "
            f"the model {model_chans} (in_chans={model_chans}); build the model with "
            f"in_chans={file_chans} and feed it {file_chans}-channel images"
        )
    if problems:
        raise DataError(
            f"{path} does not fit {model_name}: " + "; ".join(problems) + ". Is it a checkpoint "
            "of this architecture (e.g. resnet18, not resnet18_cifar, whose stem differs)?"
        )


def _channel_difference(state: dict, own: dict) -> tuple[int, int] | None:
    """(file's, model's) input channels when a convolution's weights differ only there."""
    for key, tensor in state.items():
        mine = own.get(key)
        if mine is None or tensor.ndim != 4 or tensor.shape == mine.shape:
            continue
        if tensor.shape[0] == mine.shape[0] and tensor.shape[2:] == mine.shape[2:]:
            return int(tensor.shape[1]), int(mine.shape[1])
    return None


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
        model: a moderncnn model (or another with the same key names, torchvision's).
        weights: a name (``"imagenet"``), an ``https://`` URL, or a local file.
        model_name: the registered architecture name, to look named weights up.
        transform_input: for the Inceptions; None turns it on for the published ImageNet
            files that expect ``(x - 0.5) / 0.5`` input (``PretrainedWeights.transform_input``:
            torchvision's GoogLeNet and Inception v3, timm's Inception-v4 and
            Inception-ResNet-v2), so they take ImageNet-normalised input like every other model.
        progress: show a progress bar while downloading.
    """
    name = model_name or type(model).__name__
    path = resolve_weights(weights, model_name, progress=progress)
    entry = find_pretrained(model_name, str(path))
    heads, aux_names = _heads(model, model_name)
    own = model.state_dict()
    state, adapted = _adapt_stem(remap_legacy_keys(read_state_dict(path)), own)
    if entry is not None and entry.label_offset:
        _drop_label_offset(state, own, heads, entry.label_offset)
    plan = _plan_heads(state, own, heads, aux_names)
    for key in plan.unneeded + plan.fresh_head:
        del state[key]
    _check_keys(name, path, state, own, plan.allowed)
    model.load_state_dict(state, strict=False)
    untrained_aux = entry is not None and not entry.aux_trained
    _report(path, name, plan, adapted, untrained_aux and bool(_keys_under(state, aux_names)))
    if entry is not None and entry.transform_input and hasattr(model, "transform_input"):
        rgb = not adapted
        model.transform_input = rgb if transform_input is None else transform_input
    return LoadReport(path, plan.fresh_head, plan.fresh_aux, adapted, tuple(plan.unneeded))


class _HeadPlan(NamedTuple):
    """What becomes of the file's head tensors and the model's heads (see :func:`_plan_heads`)."""

    unneeded: list[str]  # file keys of heads the model was built without: not loaded
    fresh_head: list[str]  # file keys of a head that does not fit (classes): not loaded
    fresh_aux: list[str]  # model keys of aux heads the file has nothing of: stay fresh
    allowed: set[str]  # model keys that may be missing from the file
    headless: bool  # the file has no classifier (a backbone saved after reset_classifier(0))


def _plan_heads(
    state: dict[str, Tensor], own: dict[str, Tensor], heads: list[str], aux_names: list[str]
) -> _HeadPlan:
    """Which head tensors of the file load, and which model heads stay freshly initialised."""
    # Heads the model was built without are simply not needed: aux heads (aux_logits=False),
    # the classifiers of a headless model (num_classes=0).
    absent = [m for m in (*heads, *aux_names) if not _keys_under(own, [m])]
    unneeded = _keys_under(state, absent)
    # A head whose tensors do not fit (another class count) stays fresh, with a warning; one
    # the file lacks (a backbone saved after reset_classifier(0)) stays fresh silently.
    built = [h for h in heads if h not in absent]
    misfit = [h for h in built if _misfits(state, own, h)]
    lacking = [h for h in built if not _keys_under(state, [h])]
    fresh_head = [k for h in misfit for k in _keys_under(state, [h])]  # the classifier first
    headless = bool(heads) and heads[0] in lacking and not misfit
    # An aux head the file has no tensor of at all stays as initialised (a file saved from a
    # model without aux heads); a partly present one is an error like any other missing key.
    skipped = set(unneeded) | set(fresh_head)
    in_file = {k.split(".", 1)[0] for k in state if k not in skipped}
    fresh_aux = [k for k in _keys_under(own, aux_names) if k.split(".", 1)[0] not in in_file]
    allowed = set(_keys_under(own, misfit + lacking)) | set(fresh_aux)
    return _HeadPlan(unneeded, fresh_head, fresh_aux, allowed, headless)


def _keys_under(keys: Iterable[str], modules: list[str]) -> list[str]:
    """The keys of tensors inside any of ``modules``, in their order."""
    return [k for k in keys if _under(k, modules)]


def _misfits(state: dict[str, Tensor], own: dict[str, Tensor], head: str) -> bool:
    """Whether a tensor of ``head`` in the file has no counterpart of its shape in the model."""
    return any(
        _under(k, [head]) and (k not in own or own[k].shape != v.shape) for k, v in state.items()
    )


def _report(
    path: Path, name: str, plan: _HeadPlan, adapted: list[str], untrained_aux: bool
) -> None:
    """Say what was not loaded as it is: a warning for a misfit head, log lines for the rest."""
    if plan.fresh_head:
        warnings.warn(
            f"{path.name}: its classifier does not fit {name}'s (another number of classes), "
            f"so it was not loaded and the model keeps a freshly initialised head; skipped "
            f"{', '.join(plan.fresh_head)}",
            stacklevel=3,  # the caller of load_pretrained
        )
    if plan.headless:
        log.info("%s has no classifier; %s keeps a freshly initialised one", path.name, name)
    if plan.fresh_aux:
        log.info(
            "%s has no aux-head weights; %d tensors stay fresh", path.name, len(plan.fresh_aux)
        )
    if plan.unneeded:
        log.info(
            "%s: %d head tensors not needed (%s has no such head)",
            path.name, len(plan.unneeded), name,
        )  # fmt: skip
    if untrained_aux:
        log.info("%s: its aux heads were never trained; train them before using them", path.name)
    if adapted:
        log.info("%s: adapted %s to the model's input channels", path.name, ", ".join(adapted))
