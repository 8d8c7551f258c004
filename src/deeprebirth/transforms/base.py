"""What every merge shares: the Merge interface and small graph helpers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..plan.plan import PlanEntry, PlanError


class Merge:
    """One kind of merge: ``find`` its pattern in a graph, ``apply`` it to a graph in place.

    ``find`` needs shapes on the nodes (``propagate_shapes``); ``apply`` takes its
    geometry from the entry, so an edited plan is applied as edited.
    """

    kind: str = ""
    exact: bool = True
    #: True when entries overlap (options of which a plan enables a non-overlapping set;
    #: ``find`` then costs each one alone in ``macs_saved``).
    alternatives: bool = False
    #: Whether ``apply`` reads the shapes on the nodes (``propagate_shapes`` runs first).
    needs_shapes: bool = True
    #: True for merges that remove only layers with no multiply-accumulates (batch-norm,
    #: dropout): the plan records 0 MACs saved without counting.
    keeps_macs: bool = False
    #: True for merges whose ``find`` records each entry's ``macs_saved`` (counted on the
    #: layers it replaces): the plan does not count the whole network after each one.
    counts_macs: bool = False
    #: True for merges whose ``apply`` leaves every node's recorded shape true (it removes
    #: or replaces layers by ones of the same output shape): no shape propagation after it.
    keeps_shapes: bool = False
    #: True for exact merges that can make a runtime slower (a bigger or denser kernel in
    #: place of several small ones): a plan made for a runtime times them there
    #: (``plan.runtime``) and leaves off those that make the model slower.
    can_cost_time: bool = False

    def find(self, gm: fx.GraphModule) -> list[PlanEntry]:
        raise NotImplementedError

    def apply(self, gm: fx.GraphModule, entry: PlanEntry) -> None:
        raise NotImplementedError

    def entry(
        self, anchor: str, nodes: list[str], geometry: dict | None = None, note: str = ""
    ) -> PlanEntry:
        """A plan entry of this merge's kind, named after its anchor layer."""
        return PlanEntry(
            f"{self.kind}:{anchor}", self.kind, self.exact, nodes, geometry or {}, note=note
        )


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record each node's output shape in ``node.meta["tensor_meta"]``."""
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def modules_of(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def module_node(gm: fx.GraphModule, target: str, entry: PlanEntry) -> fx.Node:
    """The call_module node for ``target``, or a PlanError saying the plan does not fit."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == target:
            return node
    raise PlanError(
        f"plan entry {entry.id}: the model has no layer {target!r} (was the plan made for "
        "another model, or an earlier entry disabled?); re-run `deeprebirth plan`"
    )


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def remove_node(gm: fx.GraphModule, node: fx.Node) -> None:
    """Drop a single-input layer, wiring its users to its input."""
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


#: Graph modules inside :func:`finished_once`: merges leave their code to the end.
_FINISHED_LATER: ContextVar[tuple[fx.GraphModule, ...]] = ContextVar("finished_later", default=())


def finish(gm: fx.GraphModule) -> None:
    """Lint, drop dead nodes; drop modules no node calls any more and regenerate the code,
    or, inside :func:`finished_once`, leave those to its end."""
    gm.graph.lint()
    gm.graph.eliminate_dead_code()
    if any(g is gm for g in _FINISHED_LATER.get()):
        return
    gm.delete_all_unused_submodules()
    gm.recompile()


@contextmanager
def finished_once(gm: fx.GraphModule) -> Iterator[fx.GraphModule]:
    """Merges applied to ``gm`` inside finish its graph but regenerate its code (and drop
    its unused modules) once, when the block ends: per merge, that was most of the time
    applying a plan took (ResNet-50's 53 batch-norm folds regenerated its code 53 times).
    Inside, run ``gm`` only through its graph (``propagate_shapes``), not ``gm(x)``; the
    code is not regenerated when the block raises."""
    token = _FINISHED_LATER.set((*_FINISHED_LATER.get(), gm))
    try:
        yield gm
    finally:
        _FINISHED_LATER.reset(token)
    finish(gm)


def pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def fit_padding(size_in: int, kernel: int, stride: int, target: int, prefer: int) -> int | None:
    """The padding (closest to ``prefer``) that makes a conv map ``size_in`` to ``target``."""
    fits = [p for p in range(kernel + stride) if (size_in + 2 * p - kernel) // stride + 1 == target]
    return min(fits, key=lambda p: abs(p - prefer)) if fits else None


def restrided_conv(
    conv: nn.Conv2d,
    stride: tuple[int, int],
    padding: tuple[int, int],
    kernel: tuple[int, int] | None = None,
) -> nn.Conv2d:
    """A copy of ``conv`` with a new stride, padding (and kernel), from the same weights.

    A larger kernel gets the old weights in its centre and zeros around them.
    """
    kernel = tuple(kernel or conv.kernel_size)
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel,
        stride=stride,
        padding=padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        old_k = conv.kernel_size
        if kernel == tuple(old_k):
            new.weight.copy_(conv.weight)
        else:
            new.weight.zero_()
            # centre the overlap of the old and new kernels in both
            sl_new, sl_old = [], []
            for kn, ko in zip(kernel, old_k, strict=True):
                m = min(kn, ko)
                sl_new.append(slice((kn - m) // 2, (kn - m) // 2 + m))
                sl_old.append(slice((ko - m) // 2, (ko - m) // 2 + m))
            new.weight[:, :, sl_new[0], sl_new[1]] = conv.weight[:, :, sl_old[0], sl_old[1]]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def conv_output_hw(size_hw, conv_geometry: dict) -> tuple[int, int]:
    k, s, p = (pair(conv_geometry[key]) for key in ("kernel", "stride", "padding"))
    return tuple((size_hw[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2))


def conv_macs(conv: nn.Conv2d, output_shape) -> int:
    """Multiply-accumulates of ``conv`` producing ``output_shape`` (N, C, H, W)."""
    n, c, h, w = output_shape
    kh, kw = pair(conv.kernel_size)
    return n * c * h * w * (conv.in_channels // conv.groups) * kh * kw


def dense_weight(conv: nn.Conv2d) -> torch.Tensor:
    """``conv``'s weight as a groups=1 weight (zeros between the groups)."""
    w, g = conv.weight, conv.groups
    if g == 1:
        return w
    out_g, in_g = conv.out_channels // g, conv.in_channels // g
    dense = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for j in range(g):
        dense[j * out_g : (j + 1) * out_g, j * in_g : (j + 1) * in_g] = w[
            j * out_g : (j + 1) * out_g
        ]
    return dense


def grouped_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The grouped weight of a block-diagonal dense one (the inverse of ``dense_weight``)."""
    out_g, in_g = weight.shape[0] // groups, weight.shape[1] // groups
    return torch.cat(
        [weight[j * out_g : (j + 1) * out_g, j * in_g : (j + 1) * in_g] for j in range(groups)]
    )


def called_once(gm: fx.GraphModule) -> set[str]:
    """Modules the graph calls from one place only: a merge may replace those (a module
    called twice shares its weights with another call site, which must not change)."""
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    return {target for target, count in calls.items() if count == 1}
