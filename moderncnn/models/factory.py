"""``create_model``: a registered architecture by name, with pretrained weights if asked."""

from __future__ import annotations

from torch import nn

from ._registry import model_entrypoint
from .pretrained import load_pretrained

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: width of the classifier; 0 builds the model without one
            (``forward`` then returns the pooled features).
        in_chans: channels of the input images (1 for Fashion-MNIST).
        weights: pretrained weights to load: ``"imagenet"`` (the variant's default weights,
            see :func:`get_variant_config`), an ``https://`` URL or a ``.pth``/``.safetensors``
            file; see :mod:`moderncnn.models.pretrained`.
        **kwargs: passed to the model's constructor (widths, depths, growth rate, ...).
    """
    model = model_entrypoint(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        load_pretrained(
            model, weights, model_name=name, transform_input=kwargs.get("transform_input")
        )
    return model
