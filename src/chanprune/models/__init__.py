"""The model zoo and the registry (``register_model``, ``create_model``, ``list_models``, ``model_info``).

Importing this package registers the built-in models: resnet20/32/56/110, vgg16_bn,
mobilenetv2, densenet40, lenet5 and tinyvgg.
"""
from .registry import create_model, list_models, model_info, register_model
from . import densenet, lenet, mobilenet, resnet_cifar, tinyvgg, vgg  # noqa: F401  (register the zoo)

__all__ = ["register_model", "create_model", "list_models", "model_info"]
