"""moderncnn's own implementations of ResNet, DenseNet, GoogLeNet and Inception v3.

Importing this package registers every architecture; see :func:`list_models`.
"""

from . import densenet, googlenet, inception, resnet  # noqa: F401  (registers the models)
from ._base import ClassifierModel, FeatureInfo
from ._registry import (
    UnknownModelError,
    check_model_name,
    create_model,
    is_model,
    list_models,
    register_model,
)

__all__ = [
    "ClassifierModel",
    "FeatureInfo",
    "UnknownModelError",
    "check_model_name",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
]
