"""The training configs that ship with moderncnn (``moderncnn/configs/``), found by name.

``from_config("quickstart")``, ``moderncnn fit -c quickstart`` and ``moderncnn fit -c
fashion_mnist/resnet18`` work from any folder and from an installed wheel; a path to a YAML
file on disk (``configs/quickstart.yaml`` in a checkout, your own ``my.yaml``) is used as it is.
``moderncnn configs`` lists the names.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MissingFileError

__all__ = ["CONFIG_ROOT", "config_description", "find_config", "list_configs"]

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
_SUFFIXES = (".yaml", ".yml")


def list_configs() -> list[str]:
    """The names of the shipped configs (``quickstart``, ``fashion_mnist/resnet18``, ...)."""
    files = sorted(p for p in CONFIG_ROOT.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
    return [p.relative_to(CONFIG_ROOT).with_suffix("").as_posix() for p in files]


def find_config(config: str | Path) -> Path:
    """The YAML file ``config`` names: a file on disk as given, else a shipped config by name
    (``quickstart``; also ``quickstart.yaml`` and ``configs/quickstart.yaml`` outside a
    checkout).

    Raises:
        MissingFileError: neither exists; the message lists the shipped names.
    """
    path = Path(config)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("./").removeprefix("configs/")
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    shipped = CONFIG_ROOT / f"{name}.yaml"
    if name and ".." not in Path(name).parts and shipped.is_file():
        return shipped
    raise MissingFileError(
        f"config {config} does not exist; give a YAML file or the name of a config that ships "
        f"with moderncnn: {', '.join(list_configs())} (`moderncnn configs`)"
    )


def config_description(name: str) -> str:
    """The first comment line of a shipped config: what it trains."""
    for line in (CONFIG_ROOT / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#") and text.strip("# "):
            return text.strip("# ").rstrip(":")
        if text and not text.startswith("#"):
            break
    return ""
