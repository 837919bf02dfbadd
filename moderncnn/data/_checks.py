"""Argument checks shared by the data modules: each error names the argument and its value."""

from __future__ import annotations

import math

from moderncnn.io.errors import ConfigError


def check_positive_int(name: str, value: int) -> int:
    """Returns ``value`` if it is an int >= 1, else raises a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value: int) -> int:
    """Returns ``value`` if it is an int >= 0, else raises a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def check_fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    """Returns ``value`` if it is a number in [0, 1) (or (0, 1)), else raises a ValueError."""
    low_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not low_ok or value >= 1:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be a fraction in {interval}, got {value!r}")
    return float(value)


def check_split_size(name: str, size: int | float) -> int | float:
    """Checks a split size: an int is a count (>= 0), a float in (0, 1) a fraction.

    A float with an integral value >= 1 (a YAML ``5000.0``, or what a ``float | int`` parser
    gives for ``5000``) counts as that many samples.
    """
    if isinstance(size, bool) or not isinstance(size, int | float) or math.isnan(size):
        raise ConfigError(f"{name} must be a count (int) or a fraction in (0, 1), got {size!r}")
    if isinstance(size, float) and size >= 1 and size.is_integer():
        size = int(size)
    if isinstance(size, int):
        return check_non_negative_int(name, size)
    if not 0 < size < 1:
        raise ConfigError(
            f"{name} must be a count (int >= 0) or a fraction in (0, 1), got {size!r}"
        )
    return size


def split_count(name: str, size: int | float, total: int, note: str = "") -> int:
    """Number of samples ``size`` means out of ``total``; at least one must remain outside.

    ``note`` is added to the error message (e.g. where ``total`` comes from).
    """
    size = check_split_size(name, size)
    count = size if isinstance(size, int) else round(size * total)
    if count >= total:
        raise ConfigError(
            f"{name}={size!r} leaves no training images: the training set has {total} images"
            f"{note}; pass a smaller count or a fraction such as 0.1"
        )
    return count


def check_seed(name: str, value: int) -> int:
    """Returns ``value`` if it is an int a torch generator takes (-2**63 .. 2**64 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise ConfigError(f"{name} must be an integer in [-2**63, 2**64), got {value!r}")
    return value
