"""DeepRebirth: make trained CNNs faster on CPUs by merging away non-tensor layers.

Example:
    >>> import deeprebirth
    >>> model = deeprebirth.get_model("bvlc_googlenet", num_classes=10)
    >>> result = deeprebirth.profile(model, runtimes=["torch"], input_size=64)  # doctest: +SKIP
"""

from importlib.metadata import version

from .data import get_dataset, get_loader
from .errors import DeepRebirthError
from .export import to_onnx
from .graph import capture
from .plan import Plan
from .planning import make_plan
from .profiling import plot_profile, profile
from .profiling.bench import bench
from .slimming import load, save, slim, tune
from .zoo import get_model, list_models, register_model

__version__ = version("deeprebirth")  # pyproject.toml says it

__all__ = [
    "DeepRebirthError",
    "Plan",
    "bench",
    "load",
    "make_plan",
    "save",
    "slim",
    "tune",
    "capture",
    "get_dataset",
    "get_loader",
    "get_model",
    "list_models",
    "plot_profile",
    "profile",
    "register_model",
    "to_onnx",
]
