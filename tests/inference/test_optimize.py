"""The public names moderncnn.inference.optimize uses for torch's batch norms and convolutions."""

from __future__ import annotations

import inspect

from torch import nn

from moderncnn.inference.optimize import BATCH_NORMS, CONVOLUTIONS


def test_every_batch_norm_torch_defines_is_named() -> None:
    """Fails when torch adds a batch norm class (a subclass of its private _BatchNorm)."""
    defined = {
        cls
        for _, cls in inspect.getmembers(nn, inspect.isclass)
        if issubclass(cls, nn.modules.batchnorm._BatchNorm)
    }
    assert defined == set(BATCH_NORMS)


def test_every_convolution_torch_defines_is_named() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(nn, inspect.isclass)
        if issubclass(cls, nn.modules.conv._ConvNd)
        and not cls.__name__.startswith(("Lazy",))
        and "Transpose" not in cls.__name__
    }
    assert defined == set(CONVOLUTIONS)
