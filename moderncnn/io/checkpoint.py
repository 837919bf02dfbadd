"""Read a state dict from a weights file safely: ``.pth``/``.pt``/``.ckpt`` or ``.safetensors``.

Pickle-based files are read with ``torch.load(weights_only=True)`` only: a pickle can run any
code when it is loaded, so a file that holds anything but tensors and plain containers is
refused, never executed. Wrappers are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``,
``{"model_state_dict": ...}``, Lightning checkpoints (whose keys carry the LightningModule's
attribute prefix, ``model.``) and ``nn.DataParallel``'s ``module.`` prefix.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import torch
from torch import Tensor

from .errors import DataError, MissingFileError

__all__ = [
    "CheckpointError",
    "is_torchscript_archive",
    "read_checkpoint",
    "read_state_dict",
    "unwrap_state_dict",
]

# Keys under which training scripts commonly nest the state dict, in the order we look.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes a whole state dict may carry: Lightning's attribute name, then DataParallel's.
PREFIXES = ("model.", "module.")


class CheckpointError(DataError):
    """A weights file that cannot be read: truncated, corrupt, unsafe, or not a state dict."""


def _unpickling_reason(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds pickled Python objects (e.g. {found.group(1)}), which could run code "
            "when loaded, so it was refused. Save `model.state_dict()` (or use .safetensors) "
            "instead; only if you trust the file's source, re-save its state dict with "
            "torch.load(..., weights_only=False) yourself"
        )
    return "it is not a readable PyTorch checkpoint (corrupt or truncated?); get the file again"


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path``'s bytes are a TorchScript archive: a zip holding a ``code/`` folder and
    ``constants.pkl``. ``torch.jit.save`` writes these; ``torch.save`` checkpoints have neither."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        names = zipfile.ZipFile(path).namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    has_code = any("/code/" in name for name in names)
    return has_code and any(name.endswith("/constants.pkl") for name in names)


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a ``.pth``/``.pt``/``.ckpt`` file, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated, corrupt, or holds pickled Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"cannot load {path}: the file is empty (0 bytes); delete it and download or save "
            "it again"
        )
    if is_torchscript_archive(path):
        # torch.load hands such a file to torch.jit.load even with weights_only=True, and
        # TorchScript is code: it loads only as an export the user named `.torchscript`.
        raise CheckpointError(
            f"cannot load {path}: it is a TorchScript archive (code), not a checkpoint; "
            "TorchScript loads only from a file named .torchscript, and only if you trust it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"cannot load {path}: {_unpickling_reason(err)}") from err
    except Exception as err:  # crafted or cut bytes fail anywhere in torch's readers
        # A truncated zip (torch.save's format) fails in the zip reader; say what it means.
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"cannot load {path}: the file is truncated or corrupt ({reason}); "
            "delete it and download or save it again"
        ) from err


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot load {path}: not a valid .safetensors file (truncated or corrupt? {err}); "
            "delete it and download or save it again"
        ) from err


def _strip_common_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside ``obj`` (a state dict, a wrapper dict or a Lightning checkpoint).

    A Lightning checkpoint keeps only the keys under the module's ``model.`` attribute (the
    backbone and its head); the loss or metric buffers beside it are not the network's.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
        )
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and not isinstance(inner, Tensor):
            obj = inner
            break
    lightning = {k[len("model.") :]: v for k, v in obj.items() if k.startswith("model.")}
    state = lightning if lightning and len(lightning) != len(obj) else dict(obj)
    non_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if non_tensors or not state:
        shown = ", ".join(repr(k) for k in (non_tensors or list(obj))[:5])
        raise CheckpointError(
            f"{source} does not hold a state dict of tensors (keys such as {shown}); expected "
            f"a state dict, or one stored under {' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    return _strip_common_prefix(state)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict of tensors in a weights file, whatever wrapper it was saved in."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise MissingFileError(f"weights file {str(path)!r} does not exist")
        return _strip_common_prefix(_read_safetensors(path))
    return unwrap_state_dict(read_checkpoint(path), source=str(path))


def paths_as_text(value: Any) -> Any:
    """``value`` with every ``pathlib`` path in it (in lists, tuples, dicts) as a string.

    A checkpoint holds the model's and the data module's hyperparameters; a ``Path`` there is a
    pickled object, which ``weights_only=True`` loading (ours, everywhere) refuses: a
    ``FashionMNISTDataModule(data_dir=Path(...))`` run would make checkpoints nothing can read.
    """
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return type(value)(paths_as_text(v) for v in value)
    if isinstance(value, Mapping):
        return {k: paths_as_text(v) for k, v in value.items()}
    return value
