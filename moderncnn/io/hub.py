"""``hf_hub:user/repo``: a saved model folder on the Hugging Face Hub, read through its cache.

``huggingface_hub`` (the optional ``hub`` extra) downloads the repository's ``config.json`` (the
model card) and ``model.safetensors`` into its cache (``$HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) and hands back the snapshot folder, which then loads like any
saved folder. With ``HF_HUB_OFFLINE=1`` nothing is downloaded: the cached snapshot is used, or
the error says that the repository is not cached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, DataError, MissingFileError

__all__ = ["HUB_PREFIX", "HUB_FILES", "hub_folder", "hub_module", "is_hub_id", "parse_hub_id"]

HUB_PREFIX = "hf_hub:"
# What a saved model folder holds on the Hub: the card, the weights, the model card page.
HUB_FILES = ["config.json", "model.safetensors", "README.md"]
# The Hub's rule for repository ids: a namespace and a name of letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_id(path: Any) -> bool:
    """Whether ``path`` names a Hub repository (``hf_hub:user/repo``) rather than a file."""
    return isinstance(path, str | os.PathLike) and str(path).startswith(HUB_PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``hf_hub:user/repo[@revision]`` (the prefix optional) -> (``user/repo``, revision)."""
    text = str(spec).removeprefix(HUB_PREFIX)
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "@" in revision:
        raise ConfigError(
            f"{spec!r} is not a Hub repository id: give hf_hub:USER/REPO (letters, digits, "
            "'-', '_', '.'), optionally @REVISION"
        )
    return repo_id, revision or None


def hub_module(what: str) -> ModuleType:
    """``huggingface_hub``, or one line saying how to install it."""
    try:
        import huggingface_hub  # the optional `hub` extra: imported only when a Hub id is used
    except ImportError:
        raise ConfigError(
            f"{what} needs the huggingface_hub package: pip install 'moderncnn[hub]'"
        ) from None
    return huggingface_hub


def _offline(hub: ModuleType) -> bool:
    """HF_HUB_OFFLINE as the library read it at import, or as the environment says now."""
    now = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(hub.constants.HF_HUB_OFFLINE) or now


def hub_folder(spec: str) -> Path:
    """The local snapshot folder of the saved model at ``spec`` (``hf_hub:user/repo``).

    Downloads it into the Hub cache unless it is there already (or HF_HUB_OFFLINE is set, when
    only the cache is read). Raises :class:`MissingFileError` naming the repository when it is
    neither cached nor reachable, :class:`DataError` when it holds no model card.
    """
    repo_id, revision = parse_hub_id(spec)
    hub = hub_module(f"loading {HUB_PREFIX}{repo_id}")
    offline = _offline(hub)
    cache = hub.constants.HF_HUB_CACHE
    try:
        folder = Path(
            hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=offline
            )
        )
    except (OSError, ValueError) as err:  # not cached, no network, no such repo or revision
        if offline:
            raise MissingFileError(
                f"{HUB_PREFIX}{repo_id} is not in the Hugging Face cache ({cache}) and "
                "HF_HUB_OFFLINE is set: download it once with the network on, or unset "
                "HF_HUB_OFFLINE"
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingFileError(
            f"{HUB_PREFIX}{repo_id} is not in the Hugging Face cache ({cache}) and could not be "
            f"downloaded ({reason[:200]})"
        ) from None
    if not (folder / HUB_FILES[0]).is_file() or not (folder / HUB_FILES[1]).is_file():
        raise DataError(
            f"{HUB_PREFIX}{repo_id} has no {HUB_FILES[0]} and {HUB_FILES[1]}: it is not a saved "
            "moderncnn model (moderncnn.push_to_hub writes them)"
        )
    return folder
