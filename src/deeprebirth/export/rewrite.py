"""Exact rewrites of a slimmed graph for the runtimes it is exported to.

``fuse_parallel`` computes an inception module's 1x1 heads as one conv and a split, and
each piece keeps the activation its head had (``split -> relu`` per branch). The runtimes
fuse an activation into the conv right before it, not across a split: ONNX Runtime's float
``FusedConv``, XNNPACK's conv with an output range, and the int8 quantizer, which folds it
into the conv's output range. So each ReLU costs a separate op there, and in int8 a
dequantize-ReLU-quantize round trip. An elementwise activation commutes with a channel
split; computed once before it, it fuses into the conv. Tuning keeps the per-branch form:
its layer-wise stages are judged at the branches' activations.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

#: Activation layers and functions moved before a split when every piece has the same one.
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6)


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> tuple | None:
    """What elementwise activation ``node`` computes on its one input, as a key two nodes
    share when they compute the same function; None for anything else."""
    if node.op == "call_module" and type(modules.get(node.target)) in ACTIVATION_MODULES:
        return ("module", type(modules[node.target]))
    if (
        node.op == "call_function"
        and node.target in ACTIVATION_FUNCTIONS
        and len(node.args) <= 2
        and set(node.kwargs) <= {"inplace"}
    ):
        return ("function", node.target)
    return None


def _hoistable(split: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node] | None:
    """The activations to move before ``split`` (one per piece, in piece order), or None
    when some piece is read by anything else, the pieces' activations differ, or the split's
    input has other readers (which an in-place activation on it would change)."""
    if split.op != "call_function" or split.target is not torch.split:
        return None
    source = split.args[0]
    if not isinstance(source, fx.Node) or len(source.users) != 1:
        return None
    pieces = list(split.users)
    if not pieces or any(p.target is not operator.getitem or len(p.users) != 1 for p in pieces):
        return None
    acts = [next(iter(p.users)) for p in pieces]
    kinds = {_activation(a, modules) for a in acts}
    if (
        len(kinds) != 1
        or None in kinds
        or any(a.args[0] is not p for a, p in zip(acts, pieces, strict=True))
    ):
        return None
    return acts


def activations_before_splits(model: nn.Module) -> nn.Module:
    """``model`` with each channel split whose pieces all go through the same activation
    rewritten as the activation, then the split (exact); a copy where anything changed,
    ``model`` itself otherwise (not a ``GraphModule``, or nothing to move)."""
    if not isinstance(model, fx.GraphModule):
        return model
    if not any(_hoistable(n, dict(model.named_modules())) for n in model.graph.nodes):
        return model
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    graph = model.graph
    for split in list(graph.nodes):
        acts = _hoistable(split, modules)
        if not acts:
            continue
        source, piece = split.args[0], acts[0].args[0]
        with graph.inserting_before(split):  # the first piece's activation, on the whole
            whole = graph.node_copy(acts[0], lambda n, p=piece, s=source: s if n is p else n)
        split.replace_input_with(source, whole)
        for act in acts:
            act.replace_all_uses_with(act.args[0])
            graph.erase_node(act)
    graph.lint()
    model.recompile()
    return model
