"""moderncnn's own implementations of ResNet (with ResNeXt, Wide ResNet and pre-activation
ResNet), DenseNet, GoogLeNet, Inception v3, Inception-v4 and Inception-ResNet-v2.

Importing this package registers every architecture; see :func:`list_models`. Each variant is
also data, :func:`get_variant_config` (input size, evaluation transform, weights, head names).
"""

from . import (  # noqa: F401  (registers the models)
    cifar_resnet,
    densenet,
    densenet_cifar,
    googlenet,
    inception,
    inception_resnet_v2,
    inception_v4,
    preact_resnet,
    resnet,
)
from ._base import ClassifierModel, FeatureInfo
from ._config import PretrainedWeights, VariantConfig
from ._registry import (
    UnknownModelError,
    check_model_name,
    get_variant_config,
    is_model,
    list_models,
    register_model,
    register_small_image_twins,
    register_variants,
    variant_configs,
)
from .factory import create_model

__all__ = [
    "ClassifierModel",
    "FeatureInfo",
    "PretrainedWeights",
    "UnknownModelError",
    "VariantConfig",
    "check_model_name",
    "create_model",
    "get_variant_config",
    "is_model",
    "list_models",
    "register_model",
    "register_small_image_twins",
    "register_variants",
    "variant_configs",
]
