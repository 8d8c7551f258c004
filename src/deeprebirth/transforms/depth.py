"""Depth compression: chains of convs become one conv (DepthShrinker, LayerMerge).

* ``merge_convs``: convs that follow each other with nothing non-linear between them
  (MobileNetV2's projection conv and the next block's expansion conv) are one linear map:
  one conv computes it. Exact when no conv after the first pads (its zero border is not
  what the first conv computes there); the parity gate checks.
* ``drop_activation`` (learned): a chain of convs joined by activations loses the
  activations and becomes one conv, which tuning then re-learns against the original.
  With ``end_activation`` (``end_in_activation``), a chain whose output no activation reads
  ends in one (a copy of the first it dropped): consecutive merged chains then stay
  separate non-linear layers instead of composing into one linear map. MobileNetV2's
  blocks end in a linear projection, so without it a run of merged blocks is one linear
  function of its input.

The merged conv is the exact composition of the chain: kernel sizes grow by
``(k - 1) * stride`` of what came before, strides multiply, groups are kept where the
composition allows (depthwise stays depthwise), biases are carried through. A padding conv
inside the chain passes its padding to the input, which is exact away from the borders. A
residual add around the whole chain (input and output of one shape, stride 1) is folded in
as a centred identity kernel, as RepVGG does.

A merged dense kernel can cost more than the thin chain it replaces (a 1x1 -> 3x3
bottleneck becomes a 3x3 over all channels): every sub-chain is a plan entry with the MACs
it saves measured alone, entries that share a layer exclude each other, and the plan
enables the non-overlapping ones that save the most (``choose_alternatives``).
"""

from __future__ import annotations

import bisect
import copy
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

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
    set_module,
    shape_of,
)

#: Element-wise activations a chain may drop (modules and functions).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.GELU)
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardswish, F.silu, F.gelu)
#: The longest chain considered, in convs.
MAX_CHAIN = 3
ADDS = (operator.add, torch.add)


def _connections(conv: nn.Conv2d) -> torch.Tensor:
    """Which input channels each output channel of ``conv`` reads: (out, in), 0 or 1."""
    g = conv.groups
    block = torch.ones(conv.out_channels // g, conv.in_channels // g)
    return torch.block_diag(*[block] * g)


def chain_groups(convs: list[nn.Conv2d], residual: bool = False) -> int:
    """The groups of the conv composing ``convs`` (plus the identity with ``residual``):
    the most blocks its channel connections fall into (depthwise stays depthwise)."""
    reach = _connections(convs[0])
    for conv in convs[1:]:
        reach = _connections(conv) @ reach
    if residual:
        reach = reach + torch.eye(*reach.shape)
    reach = reach > 0
    c_out, c_in = reach.shape
    common = math.gcd(c_out, c_in)
    for g in (d for d in range(common, 1, -1) if common % d == 0):
        inside = torch.block_diag(*[torch.ones(c_out // g, c_in // g, dtype=torch.bool)] * g)
        if not reach[~inside].any():
            return g
    return 1


def chain_geometry(convs: list[nn.Conv2d]) -> dict:
    """Kernel, stride and padding of the conv composing ``convs``: each kernel widens by
    (k - 1) times the stride before it, strides multiply, a later padding is passed through
    to the input at that stride."""
    kernel, stride, padding = (
        list(pair(getattr(convs[0], a))) for a in ("kernel_size", "stride", "padding")
    )
    for conv in convs[1:]:
        k2, s2, p2 = pair(conv.kernel_size), pair(conv.stride), pair(conv.padding)
        padding = [p + q * s for p, q, s in zip(padding, p2, stride, strict=True)]
        kernel = [k + (q - 1) * s for k, q, s in zip(kernel, k2, stride, strict=True)]
        stride = [s * t for s, t in zip(stride, s2, strict=True)]
    return {"kernel": kernel, "stride": stride, "padding": padding}


def compose_convs(convs: list[nn.Conv2d], residual: bool = False) -> nn.Conv2d:
    """One conv computing ``convs[-1](...convs[0](x))``, the activations between them gone.

    Exact when only the first conv pads; a later conv's padding is passed through to the
    input (exact away from the borders). ``residual``: ``x`` is added to the chain's output
    (an identity kernel folded into the centre tap).
    """
    first = convs[0]
    weight = dense_weight(first).detach()
    bias = first.bias.detach() if first.bias is not None else None
    stride = pair(first.stride)  # of what came before the next conv: its dilation
    for conv in convs[1:]:
        nxt = dense_weight(conv).detach()
        # W[o, i, w] = sum over m and u + p * stride = w of nxt[o, m, p] * weight[m, i, u]
        weight = F.conv_transpose2d(
            weight.transpose(0, 1), nxt.transpose(0, 1), dilation=stride
        ).transpose(0, 1)
        carried = nxt.sum((2, 3)) @ bias if bias is not None else 0
        bias = carried + (conv.bias.detach() if conv.bias is not None else 0)
        if not torch.is_tensor(bias):
            bias = None
        stride = tuple(s * t for s, t in zip(stride, pair(conv.stride), strict=True))
    geometry = chain_geometry(convs)
    kernel = geometry["kernel"]
    if residual:
        c = weight.shape[0]
        weight = weight.clone()
        weight[torch.arange(c), torch.arange(c), kernel[0] // 2, kernel[1] // 2] += 1
    groups = chain_groups(convs, residual)
    merged = nn.Conv2d(
        first.in_channels,
        convs[-1].out_channels,
        tuple(kernel),
        stride=tuple(geometry["stride"]),
        padding=tuple(geometry["padding"]),
        groups=groups,
        bias=bias is not None,
    ).to(first.weight.device, first.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(grouped_weight(weight, groups))
        if bias is not None:
            merged.bias.copy_(bias)
    return merged


def _conv(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Conv2d | None:
    conv = modules.get(node.target) if node.op == "call_module" else None
    if type(conv) is not nn.Conv2d or pair(conv.dilation) != (1, 1):
        return None
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv


def activation_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` applies one of the element-wise activations a chain may drop."""
    if node.op == "call_module":
        return isinstance(modules[node.target], ACTIVATIONS)
    return node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args[:1] == (node,) else None


def _links(
    start: fx.Node, modules: dict[str, nn.Module], once: set[str]
) -> list[tuple[fx.Node | None, fx.Node]]:
    """From conv ``start`` on: each next conv, with the activation before it (or None),
    while every layer in between has exactly one reader and each conv one call site."""
    links, node = [], start
    while len(links) < MAX_CHAIN - 1:
        user = _only_user(node)
        act = None
        if user is not None and activation_node(user, modules):
            act, user = user, _only_user(user)
        if user is None or _conv(user, modules) is None or user.target not in once:
            break
        links.append((act, user))
        node = user
    return links


def _residual(first: fx.Node, last: fx.Node) -> fx.Node | None:
    """The add of the chain's input to its output, if that is the output's only reader."""
    users = list(last.users)
    if len(users) != 1 or users[0].op != "call_function" or users[0].target not in ADDS:
        return None
    add = users[0]
    operands = [a for a in add.args if isinstance(a, fx.Node)]
    if len(add.args) != 2 or add.kwargs or len(operands) != 2:
        return None
    return add if set(operands) == {first.args[0], last} else None


def _name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A chain member's name in the plan: a conv by its module, anything else by its node
    (an activation module may be called from several places)."""
    return node.target if _conv(node, modules) is not None else node.name


class _ConvChain(Merge):
    """Chains of convs, with (``drop_activation``) or without (``merge_convs``) activations
    between them, as one conv."""

    dropping = True
    #: Entries of this merge overlap: each is costed alone, and make_plan enables a
    #: non-overlapping set (choose_alternatives).
    alternatives = True

    def find(self, gm):
        modules = modules_of(gm)
        once = called_once(gm)
        entries = []
        for n in gm.graph.nodes:
            if _conv(n, modules) is None or n.target not in once:
                continue
            links = _links(n, modules, once)
            for length in range(1, len(links) + 1):
                chain = links[:length]
                acts = [a for a, _ in chain if a is not None]
                if bool(acts) != self.dropping:
                    continue
                entries.append(self._entry(gm, n, chain, modules))
        return entries

    def _entry(self, gm, first: fx.Node, chain, modules) -> PlanEntry:
        convs = [first] + [c for _, c in chain]
        last = convs[-1]
        residual = _residual(first, last)
        merged_geometry = chain_geometry([modules[c.target] for c in convs])
        in_shape, out_shape = shape_of(first.args[0]), shape_of(last)
        if residual is not None and not (
            in_shape == out_shape
            and merged_geometry["stride"] == [1, 1]
            and all(k % 2 == 1 for k in merged_geometry["kernel"])
            and merged_geometry["padding"] == [k // 2 for k in merged_geometry["kernel"]]
        ):
            residual = None
        nodes = [_name(x, modules) for c in chain for x in (c[0], c[1]) if x is not None]
        nodes = [first.target, *nodes] + ([residual.name] if residual is not None else [])
        geometry = {
            **merged_geometry,
            "in_channels": modules[first.target].in_channels,
            "out_channels": modules[last.target].out_channels,
            "residual": residual is not None,
            "output_hw": list(out_shape[2:]) if out_shape else None,
        }
        groups = chain_groups([modules[c.target] for c in convs], residual is not None)
        before = sum(conv_macs(modules[c.target], shape_of(c)) for c in convs)
        pads_inside = any(pair(modules[c.target].padding) != (0, 0) for c in convs[1:])
        what = (
            "drops " + ", ".join(_name(a, modules) for a, _ in chain if a is not None)
            if self.dropping
            else "merges"
        )
        note = f"{what}: {len(convs)} convs as one" + (
            ", residual folded" if residual is not None else ""
        )
        # one entry per chain: named after its first and last conv
        entry = self.entry(f"{first.target}..{last.target}", nodes, geometry, note=note)
        entry.exact = not self.dropping and not pads_inside
        n, c, h, w = out_shape
        kernel = merged_geometry["kernel"]
        merged_macs = n * c * h * w * (geometry["in_channels"] // groups) * kernel[0] * kernel[1]
        entry.macs_saved = before - merged_macs
        geometry["groups"] = groups
        return entry

    def apply(self, gm, entry):
        modules = modules_of(gm)
        first = module_node(gm, entry.nodes[0], entry)
        by_name = {n.name: n for n in gm.graph.nodes}
        chain, node = [first], first
        expected = entry.nodes[1:-1] if entry.geometry.get("residual") else entry.nodes[1:]
        for name in expected:
            user = _only_user(node)
            if user is None or _name(user, modules) != name:
                found = ", ".join(_name(u, modules) for u in node.users) or "nothing"
                raise PlanError(
                    f"plan entry {entry.id}: expected {name} after {_name(node, modules)}, "
                    f"found {found}; re-run `deeprebirth plan`"
                )
            chain.append(user)
            node = user
        convs = [n for n in chain if _conv(n, modules) is not None]
        if len(convs) < 2 or any(n not in convs and not activation_node(n, modules) for n in chain):
            raise PlanError(f"plan entry {entry.id}: the chain is no longer convs and activations")
        once = called_once(gm)
        if any(c.target not in once for c in convs):
            raise PlanError(
                f"plan entry {entry.id}: a conv of the chain is called from elsewhere too"
            )
        out = node
        if entry.geometry.get("residual"):
            add = by_name.get(entry.nodes[-1])
            if add is None or _residual(first, node) is not add:
                raise PlanError(
                    f"plan entry {entry.id}: the residual add no longer wraps the chain"
                )
            out = add
        merged = compose_convs([modules[c.target] for c in convs], residual=out is not node)
        if [*merged.kernel_size] != entry.geometry["kernel"] or [*merged.stride] != entry.geometry[
            "stride"
        ]:
            raise PlanError(f"plan entry {entry.id}: the chain's convs changed since the plan")
        ending = entry.geometry.get("end_activation") and not _ends_in_activation(out, modules)
        if ending:  # a fresh copy of the first activation dropped, made before it goes
            like = next(n for n in chain if n not in convs)
            end = add_activation(gm, like, out, f"{entry.nodes[0].replace('.', '_')}_end")
            out.replace_all_uses_with(end, delete_user_cb=lambda user: user is not end)
        set_module(gm, entry.nodes[0], merged)
        out.replace_all_uses_with(first)
        for n in reversed([*chain[1:], *([out] if out is not node else [])]):
            gm.graph.erase_node(n)
        finish(gm)


def _ends_in_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    user = _only_user(node)
    return user is not None and activation_node(user, modules)


def add_activation(gm: fx.GraphModule, like: fx.Node, x: fx.Node, name: str) -> fx.Node:
    """A node applying ``like``'s activation (a fresh copy, not in place) to ``x``, placed
    right after ``x``; a module copy is registered as ``name``."""
    with gm.graph.inserting_after(x):
        if like.op == "call_module":
            module = copy.deepcopy(gm.get_submodule(like.target))
            if hasattr(module, "inplace"):
                module.inplace = False
            gm.add_submodule(name, module)
            return gm.graph.call_module(name, (x,))
        args = tuple(a for a in like.args[1:] if not isinstance(a, bool))  # no inplace flag
        kwargs = {k: v for k, v in like.kwargs.items() if k != "inplace"}
        return gm.graph.call_function(like.target, (x, *args), kwargs)


def chain_output(gm: fx.GraphModule, entry: PlanEntry) -> tuple[fx.Node, fx.Node] | None:
    """For an ``end_activation`` entry not yet applied to ``gm``: the node its merged conv
    will replace (the last conv, or the residual add), and the first activation it drops;
    None when an activation already reads that output."""
    if not entry.geometry.get("end_activation"):
        return None
    modules = modules_of(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    convs = [by_target[n] for n in entry.nodes if n in by_target and _conv(by_target[n], modules)]
    acts = [
        by_name[n] for n in entry.nodes if n in by_name and activation_node(by_name[n], modules)
    ]
    out = by_name[entry.nodes[-1]] if entry.geometry.get("residual") else convs[-1]
    if not acts or _ends_in_activation(out, modules):
        return None
    return out, acts[0]


def end_in_activation(entries: list[PlanEntry], end: bool = True) -> None:
    """Mark the ``drop_activation`` entries to end their merged conv in an activation (see
    the module's doc), or, with ``end=False``, to end linear."""
    for entry in entries:
        if entry.kind != "drop_activation":
            continue
        if end:
            entry.geometry["end_activation"] = True
        else:
            entry.geometry.pop("end_activation", None)


class DropActivation(_ConvChain):
    kind, exact, dropping = "drop_activation", False, True


class MergeConvs(_ConvChain):
    kind, exact, dropping = "merge_convs", True, False


def choose_alternatives(entries: list[PlanEntry], position: dict[str, int] | None = None) -> None:
    """Enable the set of entries that shares no layer and saves the most MACs in all;
    disable the rest.

    Each entry spans the layers from its first to its last in graph order (``position``:
    layer name -> index; default: the order the entries name them in), and spans that meet
    exclude each other. That is weighted interval scheduling, solved exactly.
    """
    if position is None:
        position = {}
        for entry in entries:
            for name in entry.nodes:
                position.setdefault(name, len(position))
    spans = sorted(
        (
            (max(position[n] for n in e.nodes), min(position[n] for n in e.nodes), e)
            for e in entries
            if e.macs_saved > 0
        ),
        key=lambda t: t[0],
    )
    best = [(0, [])]  # best[i]: (saved, chosen) over the first i spans
    ends = [end for end, _, _ in spans]
    for i, (_, start, entry) in enumerate(spans):
        j = bisect.bisect_left(ends, start, 0, i)  # spans ending before this one starts
        take = (best[j][0] + entry.macs_saved, [*best[j][1], entry])
        best.append(max(best[i], take, key=lambda t: t[0]))
    chosen = {id(e) for e in best[-1][1]}
    for entry in entries:
        entry.enabled = id(entry) in chosen
