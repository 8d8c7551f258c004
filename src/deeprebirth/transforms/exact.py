"""Exact merges: they keep the network's function and need no training.

* ``drop_layer``: dropout (a no-op at inference) and identity layers removed;
* ``fold_batchnorm``: batch-norm (with its affine scale) folded into the conv/linear before it;
* ``avgpool_conv``: average pooling followed by a 1x1 conv written as one conv;
* ``fuse_parallel``: parallel convs reading the same input with the same geometry computed
  as one wider conv followed by a split (the inception module's 1x1 heads);
* ``sum_parallel``: parallel linear branches on one input that are added (convs of any
  kernel, batch-norm, identity, average pool: RepVGG and MobileOne blocks) as one conv.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..plan.plan import PlanEntry, PlanError
from .base import (
    Merge,
    called_once,
    conv_macs,
    dense_weight,
    finish,
    grouped_weight,
    module_node,
    modules_of,
    pair,
    remove_node,
    set_module,
    shape_of,
)

#: Layers that do nothing at inference.
DROPPABLE = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
#: (tensor layer, batch-norm) pairs that fold, with torch's folding function.
BN_FOLDS = {
    (nn.Conv2d, nn.BatchNorm2d): fuse_conv_bn_eval,
    (nn.Linear, nn.BatchNorm1d): fuse_linear_bn_eval,
}


class DropLayer(Merge):
    kind, exact, needs_shapes, keeps_macs, keeps_shapes = "drop_layer", True, False, True, True

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
    kind, exact, needs_shapes, keeps_macs, keeps_shapes = "fold_batchnorm", True, False, True, True

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

    kind, exact, can_cost_time = "avgpool_conv", True, True

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

    kind, exact, can_cost_time = "fuse_parallel", True, True

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


#: Adds a summed-branch tree is made of (``x + y``, ``x += y``, ``torch.add`` without alpha).
SUMS = (operator.add, operator.iadd, torch.add)


def _is_sum(node: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in SUMS
        and len(node.args) == 2
        and not node.kwargs
    )


def _sum_leaves(
    root: fx.Node, position: dict[fx.Node, int]
) -> tuple[list[fx.Node], list[float], list[fx.Node]]:
    """The operands of the add tree at ``root``: the tensors summed (in graph order), the
    numbers summed, and the adds of the tree, root first (an inner add belongs to the tree
    when the tree is its only reader)."""
    leaves, numbers, adds, todo = [], [], [], [root]
    while todo:
        node = todo.pop()
        adds.append(node)
        for arg in node.args:
            if isinstance(arg, fx.Node) and _is_sum(arg) and list(arg.users) == [node]:
                todo.append(arg)
            elif isinstance(arg, fx.Node):
                leaves.append(arg)
            elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
                numbers.append(float(arg))
            else:
                return [], [], []
    return sorted(leaves, key=position.__getitem__), numbers, adds


def _linear_branch(node: fx.Node, modules: dict[str, nn.Module], once: set[str]) -> str | None:
    """What ``node`` is as a branch that a kernel can express: "conv", "batchnorm" or
    "avgpool" of its input (a layer called from here only, read by nothing else), or None."""
    if node.op != "call_module" or node.target not in once or len(node.users) != 1:
        return None
    if len(node.args) != 1 or node.kwargs:
        return None
    layer = modules[node.target]
    if type(layer) is nn.Conv2d:
        ok = pair(layer.dilation) == (1, 1) and layer.padding_mode == "zeros"
        return "conv" if ok and not isinstance(layer.padding, str) else None
    if type(layer) is nn.BatchNorm2d:
        return "batchnorm" if layer.running_mean is not None and not layer.training else None
    if type(layer) is nn.AvgPool2d:
        padded = pair(layer.padding) != (0, 0)
        if layer.ceil_mode or layer.divisor_override or (padded and not layer.count_include_pad):
            return None
        return "avgpool"
    return None


def _branch_geometry(kind: str, layer: nn.Module | None) -> tuple[tuple, tuple, tuple]:
    """(kernel, stride, padding) of a branch; an identity is a 1x1 kernel."""
    if kind == "conv":
        return pair(layer.kernel_size), pair(layer.stride), pair(layer.padding)
    if kind == "avgpool":
        k = pair(layer.kernel_size)
        return k, pair(layer.stride or k), pair(layer.padding)
    return (1, 1), (1, 1), (0, 0)


def _diagonal_kernel(kind: str, layer: nn.Module | None, channels: int) -> tuple:
    """(per-channel scale, kernel, bias) of a branch that maps each channel to itself."""
    if kind == "batchnorm":
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        bias = -layer.running_mean * scale
        if layer.bias is not None:
            bias = bias + layer.bias
        return scale, torch.ones(1, 1), bias
    if kind == "avgpool":
        kh, kw = pair(layer.kernel_size)
        return torch.ones(channels), torch.full((kh, kw), 1.0 / (kh * kw)), None
    return torch.ones(channels), torch.ones(1, 1), None


def _describe(branches: list[tuple[fx.Node, str]], modules: dict[str, nn.Module]) -> str:
    """The summed branches in words, largest kernels first: "3x3 conv x4 + 1x1 conv +
    batch-norm"."""
    names = {"batchnorm": "batch-norm", "avgpool": "average pool", "identity": "identity"}
    counts: Counter[tuple[int, str]] = Counter()
    for leaf, kind in branches:
        layer = modules.get(leaf.target) if kind != "identity" else None
        k = _branch_geometry(kind, layer)[0]
        label = f"{k[0]}x{k[1]} conv" if kind == "conv" else names[kind]
        if kind == "avgpool":
            label = f"{k[0]}x{k[1]} {label}"
        counts[(-k[0] * k[1] if kind == "conv" else 1, label)] += 1
    return " + ".join(
        label + (f" x{n}" if n > 1 else "") for (_, label), n in sorted(counts.items())
    )


class SumParallel(Merge):
    """Parallel linear branches on one input that are added, as one conv.

    The branches of a re-parameterizable block (RepVGG, MobileOne, ACNet, diverse-branch
    blocks) are each a linear map of the same input: convs of any kernel size (batch-norm
    already folded in), asymmetric kernels, a batch-norm alone, the input itself, an average
    pool. Their sum is one conv: each kernel placed in the largest where its padding puts
    it (a kxk conv with padding k//2 is centred), a batch-norm or the identity a
    one-tap kernel per channel, an average pool a constant one, the biases and any number
    added summed. Convs must share stride and groups (a per-channel branch fits any groups).
    """

    kind, exact, counts_macs, keeps_shapes = "sum_parallel", True, True, True
    can_cost_time = True

    def find(self, gm):
        modules, once = modules_of(gm), called_once(gm)
        position = {n: i for i, n in enumerate(gm.graph.nodes)}
        entries = []
        for node in gm.graph.nodes:
            if not _is_sum(node) or any(_is_sum(u) and list(node.users) == [u] for u in node.users):
                continue  # not a sum, or an inner add of a larger tree
            found = self._match(node, modules, once, position)
            if found is not None:
                entries.append(found)
        return entries

    def _match(self, root: fx.Node, modules, once, position) -> PlanEntry | None:
        """The entry for the add tree at ``root``, or None when its branches do not merge."""
        leaves, numbers, _ = _sum_leaves(root, position)
        if len(leaves) < 2:
            return None
        kinds = [_linear_branch(leaf, modules, once) for leaf in leaves]
        # The common input: what a layer branch reads, or an identity branch itself.
        candidates = None
        for leaf, kind in zip(leaves, kinds, strict=True):
            reads = {leaf} | ({leaf.args[0]} if kind else set())
            candidates = reads if candidates is None else candidates & reads
        if not candidates:
            return None
        # prefer the input the layers read over reading a layer as an identity
        source = next((c for c in candidates if c not in leaves), next(iter(candidates)))
        branches = [
            (leaf, kind if leaf is not source else "identity")
            for leaf, kind in zip(leaves, kinds, strict=True)
        ]
        geometry = self._geometry(root, source, branches, modules)
        if geometry is None:
            return None
        convs = [leaf.target for leaf, kind in branches if kind == "conv"]
        others = [leaf.target for leaf, kind in branches if kind not in ("conv", "identity")]
        note = _describe(branches, modules) + (" + a constant" if any(numbers) else "")
        entry = self.entry(convs[0], convs + others, geometry, note=note)
        n, c_out, h, w = shape_of(root)
        k = geometry["kernel"]
        merged = n * c_out * h * w * (shape_of(source)[1] // geometry["groups"]) * k[0] * k[1]
        before = sum(conv_macs(modules[name], shape_of(root)) for name in convs)
        entry.macs_saved = before - merged
        return entry

    @staticmethod
    def _geometry(root, source, branches, modules) -> dict | None:
        """Kernel, stride, padding and groups of the merged conv, or None if none is exact."""
        in_shape, out_shape = shape_of(source), shape_of(root)
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            return None
        if any(shape_of(leaf) != out_shape for leaf, _ in branches):
            return None  # broadcasting: not a sum of same-shaped maps
        convs = [modules[leaf.target] for leaf, kind in branches if kind == "conv"]
        if not convs:
            return None  # nothing to merge into
        groups = {c.groups for c in convs}
        diagonal = any(kind != "conv" for _, kind in branches)
        if len(groups) != 1 or (diagonal and in_shape[1] != out_shape[1]):
            return None
        shapes = [
            _branch_geometry(kind, modules.get(leaf.target) if kind != "identity" else None)
            for leaf, kind in branches
        ]
        strides = {s for _, s, _ in shapes}
        if len(strides) != 1:
            return None
        (stride,) = strides
        # Each branch's kernel sits at offset (P - p) in a kernel of size K with padding P.
        padding = tuple(max(p[i] for _, _, p in shapes) for i in range(2))
        kernel = tuple(max(padding[i] - p[i] + k[i] for k, _, p in shapes) for i in range(2))
        size = tuple(
            (in_shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2)
        )
        if size != tuple(out_shape[2:]):
            return None  # the padding would have to differ between sides
        return {
            "kernel": list(kernel),
            "stride": list(stride),
            "padding": list(padding),
            "groups": groups.pop(),
            "branches": len(branches),
        }

    def apply(self, gm, entry):
        anchor = module_node(gm, entry.nodes[0], entry)
        for name in entry.nodes[1:]:
            module_node(gm, name, entry)
        root = anchor
        while len(root.users) == 1 and _is_sum(next(iter(root.users))):
            root = next(iter(root.users))
        if root is anchor:
            raise PlanError(f"plan entry {entry.id}: {entry.nodes[0]} is no longer summed")
        modules = modules_of(gm)
        position = {n: i for i, n in enumerate(gm.graph.nodes)}
        found = self._match(root, modules, called_once(gm), position)
        if found is None or found.nodes != entry.nodes:
            raise PlanError(
                f"plan entry {entry.id}: the branches summed with {entry.nodes[0]} changed"
            )
        leaves, numbers, adds = _sum_leaves(root, position)
        source = next(
            leaf.args[0]
            for leaf in leaves
            if leaf.op == "call_module" and leaf.target == entry.nodes[0]
        )
        g = found.geometry
        kernel, padding = tuple(g["kernel"]), tuple(g["padding"])
        first = modules[entry.nodes[0]]
        c_in, c_out = shape_of(source)[1], shape_of(root)[1]
        weight = first.weight.new_zeros(c_out, c_in, *kernel)
        bias = first.weight.new_zeros(c_out) + sum(numbers)
        channels = torch.arange(c_out)
        with torch.no_grad():
            for leaf in leaves:
                kind = (
                    "identity"
                    if leaf is source
                    else _linear_branch(leaf, modules, set(entry.nodes))
                )
                layer = modules.get(leaf.target) if kind != "identity" else None
                k, _, p = _branch_geometry(kind, layer)
                at = [slice(padding[i] - p[i], padding[i] - p[i] + k[i]) for i in range(2)]
                if kind == "conv":
                    weight[:, :, at[0], at[1]] += dense_weight(layer)
                    if layer.bias is not None:
                        bias += layer.bias
                    continue
                scale, taps, shift = _diagonal_kernel(kind, layer, c_out)
                weight[channels, channels, at[0], at[1]] += scale[:, None, None] * taps.to(weight)
                if shift is not None:
                    bias += shift
            merged = nn.Conv2d(
                c_in, c_out, kernel, tuple(g["stride"]), padding, groups=g["groups"]
            ).to(first.weight.device, first.weight.dtype)
            merged.weight.copy_(grouped_weight(weight, g["groups"]))
            merged.bias.copy_(bias)
        merged.fused_from = list(entry.nodes)
        set_module(gm, entry.nodes[0], merged)
        with gm.graph.inserting_before(root):
            new = gm.graph.call_module(entry.nodes[0], (source,))
        new.meta = dict(root.meta)  # the sum's shape: later entries need no propagation
        root.replace_all_uses_with(new)
        for node in dict.fromkeys([*adds, *(leaf for leaf in leaves if leaf is not source)]):
            if not node.users:  # the tree's adds first (root first), then its branches
                gm.graph.erase_node(node)
        finish(gm)
