"""Exact merges: they keep the network's function and need no training.

* ``drop_layer``: dropout (a no-op at inference) and identity layers removed;
* ``fold_batchnorm``: batch-norm (with its affine scale) folded into the conv/linear before it;
* ``avgpool_conv``: average pooling followed by a 1x1 conv written as one conv;
* ``fuse_parallel``: parallel convs reading the same input with the same geometry computed
  as one wider conv followed by a split (the inception module's 1x1 heads).
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..plan.plan import PlanEntry, PlanError
from .base import Merge, finish, module_node, modules_of, pair, remove_node, set_module

#: Layers that do nothing at inference.
DROPPABLE = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
#: (tensor layer, batch-norm) pairs that fold, with torch's folding function.
BN_FOLDS = {
    (nn.Conv2d, nn.BatchNorm2d): fuse_conv_bn_eval,
    (nn.Linear, nn.BatchNorm1d): fuse_linear_bn_eval,
}


class DropLayer(Merge):
    kind, exact, needs_shapes, keeps_macs = "drop_layer", True, False, True

    def find(self, gm):
        modules = modules_of(gm)
        return [
            self.entry(n.target, [n.target], note=type(modules[n.target]).__name__)
            for n in gm.graph.nodes
            if n.op == "call_module" and type(modules[n.target]) in DROPPABLE
        ]

    def apply(self, gm, entry):
        remove_node(gm, module_node(gm, entry.nodes[0], entry))
        finish(gm)


class FoldBatchNorm(Merge):
    kind, exact, needs_shapes, keeps_macs = "fold_batchnorm", True, False, True

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            if n.op != "call_module" or len(n.users) != 1:
                continue
            (user,) = n.users
            if user.op != "call_module":
                continue
            if (type(modules[n.target]), type(modules[user.target])) in BN_FOLDS:
                bn = modules[user.target]
                if bn.track_running_stats and bn.running_mean is not None:
                    entries.append(self.entry(n.target, [n.target, user.target]))
        return entries

    def apply(self, gm, entry):
        layer_node = module_node(gm, entry.nodes[0], entry)
        bn_node = module_node(gm, entry.nodes[1], entry)
        if list(layer_node.users) != [bn_node]:
            raise PlanError(
                f"plan entry {entry.id}: {entry.nodes[1]} no longer follows {entry.nodes[0]}"
            )
        modules = modules_of(gm)
        layer, bn = modules[entry.nodes[0]], modules[entry.nodes[1]]
        fold = BN_FOLDS[(type(layer), type(bn))]
        set_module(gm, entry.nodes[0], fold(layer.eval(), bn.eval()))
        remove_node(gm, bn_node)
        finish(gm)


class AvgPoolConv(Merge):
    """AvgPool2d(k, s) -> 1x1 conv is one kxk conv with stride s and weights w / k^2."""

    kind, exact = "avgpool_conv", True

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            pool = modules.get(n.target) if n.op == "call_module" else None
            if type(pool) is not nn.AvgPool2d or len(n.users) != 1:
                continue
            if pool.ceil_mode or pair(pool.padding) != (0, 0) or pool.divisor_override:
                continue
            (user,) = n.users
            conv = modules.get(user.target) if user.op == "call_module" else None
            if (
                type(conv) is nn.Conv2d
                and conv.kernel_size == (1, 1)
                and conv.stride == (1, 1)
                and conv.groups == 1
                and pair(conv.padding) == (0, 0)
            ):
                k, s = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
                geometry = {"kernel": list(k), "stride": list(s), "padding": [0, 0]}
                entries.append(self.entry(user.target, [n.target, user.target], geometry))
        return entries

    def apply(self, gm, entry):
        pool_node = module_node(gm, entry.nodes[0], entry)
        module_node(gm, entry.nodes[1], entry)
        conv = modules_of(gm)[entry.nodes[1]]
        k, s = tuple(entry.geometry["kernel"]), tuple(entry.geometry["stride"])
        new = nn.Conv2d(conv.in_channels, conv.out_channels, k, s, bias=conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(conv.weight.expand(-1, -1, *k) / (k[0] * k[1]))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        set_module(gm, entry.nodes[1], new.to(conv.weight.dtype))
        remove_node(gm, pool_node)
        finish(gm)


def _conv_signature(conv: nn.Conv2d) -> tuple:
    return (
        conv.in_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.padding_mode,
        conv.bias is not None,
    )


class FuseParallel(Merge):
    """Convs that read the same input with the same geometry become one conv and a split."""

    kind, exact = "fuse_parallel", True

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            groups: dict[tuple, list[str]] = defaultdict(list)
            for user in n.users:
                conv = modules.get(user.target) if user.op == "call_module" else None
                if (
                    type(conv) is nn.Conv2d
                    and conv.groups == 1
                    and user.args[0] is n
                    and len(user.args) == 1
                ):
                    groups[_conv_signature(conv)].append(user.target)
            for names in groups.values():
                if len(names) > 1:
                    conv = modules[names[0]]
                    geometry = {
                        "kernel": list(conv.kernel_size),
                        "stride": list(conv.stride),
                        "padding": list(pair(conv.padding)),
                        "out_channels": [modules[m].out_channels for m in names],
                    }
                    entries.append(self.entry(names[0], names, geometry))
        return entries

    def apply(self, gm, entry):
        # Fuse the entry's convs that share an input now: if an earlier merge the plan
        # counted on (a branch's head pool removal) was not applied, fuse the rest.
        by_source: dict[fx.Node, list[fx.Node]] = defaultdict(list)
        for name in entry.nodes:
            node = module_node(gm, name, entry)
            by_source[node.args[0]].append(node)
        groups = [nodes for nodes in by_source.values() if len(nodes) > 1]
        if not groups:
            raise PlanError(
                f"plan entry {entry.id}: {', '.join(entry.nodes)} no longer share an input"
            )
        for nodes in groups:
            self._fuse(gm, nodes, entry)
        finish(gm)

    def _fuse(self, gm: fx.GraphModule, nodes: list[fx.Node], entry: PlanEntry) -> None:
        source = nodes[0].args[0]
        modules = modules_of(gm)
        convs = [modules[n.target] for n in nodes]
        if len({_conv_signature(c) for c in convs}) != 1:
            raise PlanError(f"plan entry {entry.id}: the convs differ in geometry")
        first = convs[0]
        fused = nn.Conv2d(
            first.in_channels,
            sum(c.out_channels for c in convs),
            first.kernel_size,
            first.stride,
            first.padding,
            first.dilation,
            bias=first.bias is not None,
        ).to(first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([c.weight for c in convs]))
            if first.bias is not None:
                fused.bias.copy_(torch.cat([c.bias for c in convs]))
        fused.fused_from = [n.target for n in nodes]  # lets tuning find the original layers
        fused_name = f"{nodes[0].target}_fused"
        set_module(gm, fused_name, fused)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        earliest = min(nodes, key=order.__getitem__)
        with gm.graph.inserting_before(earliest):
            fused_node = gm.graph.call_module(fused_name, (source,))
            # (N, sum C_i, H, W) -> one (N, C_i, H, W) view per original conv
            sizes = [c.out_channels for c in convs]
            parts = gm.graph.call_function(torch.split, (fused_node, sizes), {"dim": 1})
            for i, node in enumerate(nodes):
                piece = gm.graph.call_function(operator.getitem, (parts, i))
                node.replace_all_uses_with(piece)
                # A split's outputs are views that autograd forbids modifying in place.
                for user in list(piece.users):
                    if user.op == "call_module" and getattr(modules[user.target], "inplace", False):
                        modules[user.target].inplace = False
                    elif user.op == "call_function" and user.kwargs.get("inplace"):
                        user.kwargs = {**user.kwargs, "inplace": False}
        for node in nodes:
            gm.graph.erase_node(node)
