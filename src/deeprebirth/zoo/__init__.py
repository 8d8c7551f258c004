"""Model zoo: the paper's networks, torchvision's classifiers, and users' own models."""

from . import bvlc_alexnet, bvlc_googlenet  # noqa: F401  (registers the models)
from ._registry import (
    ModelEntry,
    adapt_input_channels,
    get_model,
    list_models,
    model_meta,
    register_model,
)
from .layers import LocalResponseNorm
from .weights import apply_state_dict, read_state_dict

__all__ = [
    "LocalResponseNorm",
    "ModelEntry",
    "adapt_input_channels",
    "apply_state_dict",
    "get_model",
    "list_models",
    "model_meta",
    "read_state_dict",
    "register_model",
]
