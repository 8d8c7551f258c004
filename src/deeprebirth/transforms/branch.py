"""Branch merges (horizontal), for multi-branch blocks such as GoogLeNet's inception module.

* ``branch_pool``: a branch that starts with a shape-preserving pooling layer (the inception
  pool branch: max-pool 3x3/1 -> 1x1 conv) loses that pool; its conv learns to do its job.
  Its conv then reads the block input like the other heads, so ``fuse_parallel`` can
  compute all the 1x1 heads as one conv.
* ``block_pool``: a pool after a concatenating block (GoogLeNet's pool3 after inception 3b)
  is removed by striding the block's first convs, so the whole block computes at the pooled
  resolution.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..plan.plan import PlanError
from .base import (
    Merge,
    conv_output_hw,
    finish,
    fit_padding,
    module_node,
    modules_of,
    pair,
    remove_node,
    restrided_conv,
    set_module,
    shape_of,
)

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
CONCATS = (torch.cat, torch.concat)


class BranchPool(Merge):
    kind, exact = "branch_pool", False

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            pool = modules.get(n.target) if n.op == "call_module" else None
            if not isinstance(pool, POOLS) or not isinstance(n.args[0], fx.Node):
                continue
            source = n.args[0]
            if len(source.users) < 2 or shape_of(n) != shape_of(source):
                continue  # not a branch head, or the pool changes the shape
            heads = [modules.get(u.target) if u.op == "call_module" else None for u in n.users]
            if not all(isinstance(h, nn.Conv2d) for h in heads):
                continue  # the branch's tensor layer must be there to take the pool's job
            entries.append(
                self.entry(
                    n.target, [n.target], note=f"{type(pool).__name__} at the head of a branch"
                )
            )
        return entries

    def apply(self, gm, entry):
        node = module_node(gm, entry.nodes[0], entry)
        if shape_of(node) is not None and shape_of(node) != shape_of(node.args[0]):
            raise PlanError(
                f"plan entry {entry.id}: {entry.nodes[0]} changes the shape; it is not a branch head"
            )
        remove_node(gm, node)
        finish(gm)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return seen


def _block(concat: fx.Node) -> tuple[fx.Node, set[fx.Node]] | None:
    """The block input and the nodes strictly between it and ``concat``."""
    branches = [a for a in concat.args[0] if isinstance(a, fx.Node)]
    if len(branches) < 2:
        return None
    common = set.intersection(*({b} | _ancestors(b) for b in branches))
    if not common:
        return None
    order = {n: i for i, n in enumerate(concat.graph.nodes)}
    source = max(common, key=order.__getitem__)  # the latest node all branches come from
    inside = (_ancestors(concat) - _ancestors(source)) - {source}
    return source, inside


class BlockPool(Merge):
    kind, exact = "block_pool", False

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            pool = modules.get(n.target) if n.op == "call_module" else None
            if not isinstance(pool, POOLS):
                continue
            concat = n.args[0]
            if not (
                isinstance(concat, fx.Node) and concat.target in CONCATS and len(concat.users) == 1
            ):
                continue
            found = _block(concat)
            if found is None:
                continue
            source, inside = found
            if any(set(m.users) - inside - {concat} for m in inside):
                continue  # something outside the block reads an intermediate result
            if any(
                a not in inside and a is not source and a.op != "get_attr"
                for m in inside
                for a in m.all_input_nodes
            ):
                continue  # the block reads something besides its input
            heads = [u for u in source.users if u in inside]
            size_in = shape_of(source)[2:]
            if any(
                shape_of(m) is not None and len(shape_of(m)) == 4 and shape_of(m)[2:] != size_in
                for m in inside
            ):
                continue  # the block must keep its input's resolution
            if not all(
                type(modules.get(h.target)) is nn.Conv2d for h in heads if h.op == "call_module"
            ) or any(h.op != "call_module" for h in heads):
                continue
            target = shape_of(n)[2:]
            head_geometry = {}
            for h in heads:
                conv = modules[h.target]
                stride = [a * b for a, b in zip(pair(conv.stride), pair(pool.stride), strict=True)]
                k, p0 = pair(conv.kernel_size), pair(conv.padding)
                padding = [
                    fit_padding(size_in[i], k[i], stride[i], target[i], p0[i]) for i in range(2)
                ]
                if None in padding:
                    break
                head_geometry[h.target] = {"kernel": list(k), "stride": stride, "padding": padding}
            else:
                geometry = {"heads": head_geometry, "output_hw": list(target)}
                entries.append(
                    self.entry(
                        n.target,
                        [n.target, *head_geometry],
                        geometry,
                        note=f"strides the {len(heads)} first convs of the block before it",
                    )
                )
        return entries

    def apply(self, gm, entry):
        pool_node = module_node(gm, entry.nodes[0], entry)
        modules = modules_of(gm)
        heads = entry.geometry.get("heads", {})
        pooled = list(entry.geometry["output_hw"])
        for name, g in heads.items():  # check every head before changing any
            size_in = shape_of(module_node(gm, name, entry).args[0])
            if size_in is not None and list(conv_output_hw(size_in[2:], g)) != pooled:
                raise PlanError(
                    f"plan entry {entry.id}: geometry of {name} does not give the pooled size {pooled}"
                )
        for name, g in heads.items():
            new = restrided_conv(modules[name], tuple(g["stride"]), tuple(g["padding"]))
            set_module(gm, name, new)
        remove_node(gm, pool_node)
        finish(gm)
