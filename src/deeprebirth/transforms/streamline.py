"""Streamline merge (vertical): a conv and the pooling/LRN run after it become one conv.

    conv 7x7/2 -> ReLU -> max-pool 3x3/2 -> LRN    becomes    conv 7x7/4 -> ReLU

The new conv's stride is the product of the run's strides and its padding is chosen so its
output has exactly the run's output shape (ceil-mode pooling included). It starts from the
original conv's weights and is learned (max-pooling and LRN are not linear). Element-wise
activations in the run stay where they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

#: Non-tensor layers the new conv absorbs (pooling contributes its stride).
ABSORBED = (nn.MaxPool2d, nn.AvgPool2d, nn.LocalResponseNorm)
#: Element-wise layers a run passes through and keeps (modules and functions).
KEPT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
KEPT_FUNCTIONS = (F.relu, torch.relu, F.relu6)


def _absorbed(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], ABSORBED)


def _kept(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], KEPT)
    return node.op == "call_function" and node.target in KEPT_FUNCTIONS


def _follow_run(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The chain of absorbable/kept layers after ``node``, each intermediate with one user."""
    run = []
    while len(node.users) == 1:
        (user,) = node.users
        if not (_absorbed(user, modules) or _kept(user, modules)) or user.args[0] is not node:
            break
        run.append(user)
        node = user
    # Trailing kept layers belong to the conv's output either way; stop at the last absorbed.
    while run and not _absorbed(run[-1], modules):
        run.pop()
    return run


class Streamline(Merge):
    kind, exact = "streamline", False

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            conv = modules.get(n.target) if n.op == "call_module" else None
            if type(conv) is not nn.Conv2d or pair(conv.dilation) != (1, 1):
                continue
            run = _follow_run(n, modules)
            absorbed = [r for r in run if _absorbed(r, modules)]
            if not absorbed:
                continue
            # stride: the product of the run's strides; receptive field: what one output of
            # the run sees of the conv's input.
            stride, field = list(pair(conv.stride)), list(pair(conv.kernel_size))
            for r in absorbed:
                pool = modules[r.target]
                if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
                    pk = pair(pool.kernel_size)
                    field = [f + (k - 1) * s for f, k, s in zip(field, pk, stride, strict=True)]
                    stride = [a * b for a, b in zip(stride, pair(pool.stride), strict=True)]
            size_in = shape_of(n.args[0])[2:]
            target = shape_of(run[-1])[2:]
            p0 = pair(conv.padding)
            # Keep the conv's kernel (cheapest, starts from its weights); if no padding then
            # gives the run's output shape, grow the kernel to the run's receptive field.
            for k in (pair(conv.kernel_size), field):
                padding = [
                    fit_padding(size_in[i], k[i], stride[i], target[i], p0[i]) for i in range(2)
                ]
                if None not in padding:
                    break
            else:
                continue  # no symmetric padding gives the run's output shape
            geometry = {
                "kernel": list(k),
                "stride": stride,
                "padding": padding,
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "output_hw": list(target),
            }
            names = [n.target] + [r.target if r.op == "call_module" else r.name for r in run]
            removed = ", ".join(r.target for r in absorbed)
            entries.append(self.entry(n.target, names, geometry, note=f"removes {removed}"))
        return entries

    def apply(self, gm, entry):
        conv_node = module_node(gm, entry.nodes[0], entry)
        modules = modules_of(gm)
        chain, node = [], conv_node
        for name in entry.nodes[1:]:
            users = list(node.users)
            if len(users) != 1 or name not in (users[0].target, users[0].name):
                found = " -> ".join(str(u.target) for u in users) or "nothing"
                raise PlanError(
                    f"plan entry {entry.id}: expected {name} after {node.target}, found {found}; re-run `deeprebirth plan`"
                )
            node = users[0]
            chain.append(node)
        g = entry.geometry
        conv = modules[entry.nodes[0]]
        size_in = shape_of(conv_node.args[0])
        if size_in is not None and "output_hw" in g:
            out = conv_output_hw(size_in[2:], g)
            if list(out) != list(g["output_hw"]):
                raise PlanError(
                    f"plan entry {entry.id}: stride {g['stride']} and padding {g['padding']} give "
                    f"{out[0]}x{out[1]}, but the merged run's output is {g['output_hw'][0]}x{g['output_hw'][1]}"
                )
        new = restrided_conv(conv, tuple(g["stride"]), tuple(g["padding"]), tuple(g["kernel"]))
        set_module(gm, entry.nodes[0], new)
        for node in chain:
            if _absorbed(node, modules):
                remove_node(gm, node)
        finish(gm)
