"""Model registry: every architecture is a named entry point that builds it.

Entry points only fix depth and width and pass ``**kwargs`` through, so a variant is
data, not code: each family file declares a table of :class:`VariantConfig` (depths, widths,
stem, input size, evaluation transform, pretrained weights, head names) and its entry points
look their variant up in it. The small-image ``*_cifar`` twins are made from the table by
one rule (:func:`register_small_image_twins`). Registering a name twice raises instead of
silently replacing the first.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from moderncnn.io.errors import ConfigError

from ._config import VariantConfig, small_image_twin

ModelFn = Callable[..., nn.Module]
# What a family's entry points call: (variant name, num_classes, in_chans, kwargs) -> model.
CreateFn = Callable[[str, int, int, Mapping[str, Any]], nn.Module]

_MODEL_ENTRYPOINTS: dict[str, ModelFn] = {}
_VARIANT_CONFIGS: dict[str, VariantConfig] = {}


class UnknownModelError(ConfigError):
    """Raised by :func:`create_model` for a name that is not registered."""


def register_model(fn: ModelFn) -> ModelFn:
    """Register ``fn`` under its ``__name__``; a duplicate name raises ``ValueError``."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(
            f"model name {name!r} is already registered by "
            f"{_MODEL_ENTRYPOINTS[name].__module__}; pick another name"
        )
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def register_variants(*configs: VariantConfig) -> dict[str, VariantConfig]:
    """Record the variant tables of a family; a name declared twice raises ``ValueError``.

    Returns the family's table, name -> config, in declaration order.
    """
    table: dict[str, VariantConfig] = {}
    for config in configs:
        if config.name in _VARIANT_CONFIGS or config.name in table:
            raise ValueError(f"variant {config.name!r} is already declared; pick another name")
        table[config.name] = config
    _VARIANT_CONFIGS.update(table)
    return table


def register_small_image_twins(
    table: dict[str, VariantConfig], create: CreateFn, names: list[str] | None = None
) -> dict[str, ModelFn]:
    """Declare and register ``<name>_cifar`` for each variant in ``table`` (all by default).

    The twin's config is :func:`small_image_twin` of the variant's (the ``"cifar"`` stem,
    32 x 32 input, no weights); its entry point, like every other, only passes
    ``num_classes``, ``in_chans`` and ``**kwargs`` to ``create`` (so ``stem=`` given explicitly
    wins, as any keyword does). ``table`` gains the twins; the entry points are returned, for
    the family module to bind as module attributes.
    """
    entry_points = {}
    for name in list(table) if names is None else names:
        twin = small_image_twin(table[name])
        table.update(register_variants(twin))
        fn = register_model(_entry_point(twin, create))
        entry_points[twin.name] = fn
    return entry_points


def _entry_point(config: VariantConfig, create: CreateFn) -> ModelFn:
    name = config.name

    def entry_point(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return create(name, num_classes, in_chans, kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__module__ = create.__module__
    entry_point.__doc__ = config.description
    return entry_point


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted.

    Args:
        pattern: a glob, e.g. 'resnet*'.
    """
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` naming the closest registered names."""
    if name in _MODEL_ENTRYPOINTS:
        return
    close = difflib.get_close_matches(name, list(_MODEL_ENTRYPOINTS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model name {name!r}.{hint} "
        f"See moderncnn.list_models() or `moderncnn models` for the {len(_MODEL_ENTRYPOINTS)} "
        "registered names."
    )


ModelT = TypeVar("ModelT", bound=nn.Module)


def variant_builder(
    model_class: type[ModelT],
) -> Callable[[str, int, int, Mapping[str, Any]], ModelT]:
    """A family's builder (a :data:`CreateFn`): the registered variant's fixed arguments
    (depth, block, stem, ...) give way to the caller's ``kwargs`` (timm's ``_create_resnet``),
    so the variants are data, not code."""

    def create(name: str, num_classes: int, in_chans: int, kwargs: Mapping[str, Any]) -> ModelT:
        args = get_variant_config(name).build_args(kwargs)
        return model_class(num_classes=num_classes, in_chans=in_chans, **args)

    create.__module__ = model_class.__module__  # the entry points live in the family's module
    return create


def get_variant_config(name: str) -> VariantConfig:
    """The :class:`VariantConfig` of a registered model name, without building it.

    Raises:
        UnknownModelError: ``name`` is not registered (the message names the closest ones).
        LookupError: ``name`` was registered with :func:`register_model` alone, with no
            table entry (:func:`register_variants`).
    """
    check_model_name(name)
    try:
        return _VARIANT_CONFIGS[name]
    except KeyError:
        raise LookupError(
            f"model {name!r} was registered without a VariantConfig; declare one with "
            "moderncnn.models.register_variants(VariantConfig(...))"
        ) from None


def variant_configs() -> dict[str, VariantConfig]:
    """Every declared variant, name -> config (a copy)."""
    return dict(_VARIANT_CONFIGS)


def model_entrypoint(name: str) -> ModelFn:
    """The function registered as ``name``; :class:`UnknownModelError` names close ones."""
    check_model_name(name)
    return _MODEL_ENTRYPOINTS[name]
