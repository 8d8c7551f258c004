"""Graph capture with torch.fx.

Every layer the taxonomy knows (conv, pooling, LRN, batch-norm, ...) is kept as one leaf
node, so the graph reads in the paper's terms: one node per layer.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import fx, nn

from ..errors import TraceError
from .taxonomy import is_leaf_type


def _batchnorm_act(layer: nn.BatchNorm2d) -> nn.Module:
    """timm's BatchNormAct2d (a batch-norm that also runs dropout and an activation) as the
    three layers it computes, so that the batch-norm folds and the activation is seen."""
    bn = nn.BatchNorm2d(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    ).to(layer.weight.device if layer.weight is not None else None)
    own = {k: v for k, v in layer.state_dict().items() if "." not in k}
    bn.load_state_dict(own)
    parts = OrderedDict(bn=bn, drop=layer.drop, act=layer.act)
    kept = OrderedDict((k, v) for k, v in parts.items() if type(v) is not nn.Identity)
    return nn.Sequential(kept).train(layer.training)


#: Layers of other libraries that compute several layers in one module, by qualified class
#: name (no import of the library needed) -> the layers they compute, as one module.
#: Captured graphs see the parts: a batch-norm that folds, an activation that counts.
SPLIT_LAYERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "timm.layers.norm_act.BatchNormAct2d": _batchnorm_act,
}


def _qualified_name(layer: nn.Module) -> str:
    return f"{type(layer).__module__}.{type(layer).__qualname__}"


def split_layers(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it with every ``SPLIT_LAYERS`` layer replaced by its parts."""
    if not any(_qualified_name(m) in SPLIT_LAYERS for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, layer in list(model.named_modules()):
        split = SPLIT_LAYERS.get(_qualified_name(layer))
        if split is not None and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, split(layer))
    return model


def _library_leaves() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """The modules and functions a model library registered as not traceable by torch.fx
    (timm's ``register_notrace_module``/``_function``: a shape check, a padding computed
    from the input size), when that library is loaded: they stay leaves, called as a whole."""
    if "timm" not in sys.modules:  # a timm model imported timm already; never import it here
        return (), ()
    from timm.models import get_notrace_functions, get_notrace_modules

    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class LayerTracer(fx.Tracer):
    """A tracer that keeps every taxonomy layer (including subclasses), and what a model
    library registered as not traceable, as a leaf."""

    def __init__(self):
        self.library_modules, functions = _library_leaves()
        super().__init__(autowrap_functions=functions)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            is_leaf_type(m)
            or isinstance(m, self.library_modules)
            or super().is_leaf_module(m, module_qualified_name)
        )


def capture(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` with one node per layer.

    Raises:
        TraceError: naming the cause, when torch.fx cannot trace the model
            (e.g. control flow that depends on tensor values).
    """
    if isinstance(model, fx.GraphModule):
        return model
    model = split_layers(model)
    try:
        graph = LayerTracer().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {cause} "
            "(data-dependent control flow must be moved into a leaf module)"
        ) from e
    # Layers whose output nothing reads (timm's DLA computes a projection it never uses)
    # go now: a merge's clean-up would drop them later, and a plan made before that would
    # name layers that applying it cannot find.
    gm = fx.GraphModule(model, graph, type(model).__name__)
    if gm.graph.eliminate_dead_code():
        gm.delete_all_unused_submodules()
        gm.recompile()
    gm.training = model.training
    return gm


def example_input(batch: int, in_chans: int, size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic random image batch, NCHW."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, size, size, generator=gen)
