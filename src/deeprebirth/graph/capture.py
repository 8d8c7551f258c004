"""Graph capture with torch.fx.

Every layer the taxonomy knows (conv, pooling, LRN, batch-norm, ...) is kept as one leaf
node, so the graph reads in the paper's terms: one node per layer.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import TraceError
from .taxonomy import is_leaf_type


class LayerTracer(fx.Tracer):
    """A tracer that keeps every taxonomy layer (including subclasses) as a leaf module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf_type(m) or super().is_leaf_module(m, module_qualified_name)


def capture(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` with one node per layer.

    Raises:
        TraceError: naming the cause, when torch.fx cannot trace the model
            (e.g. control flow that depends on tensor values).
    """
    if isinstance(model, fx.GraphModule):
        return model
    try:
        graph = LayerTracer().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {cause} "
            "(data-dependent control flow must be moved into a leaf module)"
        ) from e
    name = type(model).__name__
    gm = fx.GraphModule(model, graph, name)
    gm.training = model.training
    return gm


def example_input(batch: int, in_chans: int, size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic random image batch, NCHW."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, size, size, generator=gen)
