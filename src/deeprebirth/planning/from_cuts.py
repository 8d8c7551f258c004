"""Options run from where they first differ from the base.

An option's error before tuning (``select.reconstruction_error``) is its output on the cost
batches against the original's. An option changes a few layers and everything before them
is the base's, node for node and weight for weight; so the base's outputs at its cuts
(:func:`~deeprebirth.planning.blocks.cut_nodes`: after a cut only its output is live) are
kept, and each option runs from the last cut before its first changed node, torch.fx's
:class:`~torch.fx.Interpreter` given that cut's value. The same operations on the same
values give the same output; the layers before the cut are not run again for every option
(ResNet-50 at 224x224: 52 options, each a whole network on 16 images, were most of a
selection's time before its timing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from .blocks import _attr, cut_nodes


class BaseOutputs:
    """``base``'s outputs at its cuts on ``batches``; :meth:`outputs` runs a network from
    the last of them it shares with ``base``."""

    @torch.no_grad()
    def __init__(self, base: fx.GraphModule, batches: Sequence[torch.Tensor]):
        self.base, self.batches = base, list(batches)
        cuts = set(cut_nodes(base))
        self.values: list[dict[str, torch.Tensor]] = []
        for x in self.batches:
            kept: dict[str, torch.Tensor] = {}
            _Keeper(base, cuts, kept).run(x)
            self.values.append(kept)
        # (a cut whose output is not one tensor, a split's, is not started from)
        self.cuts = [n.name for n in base.graph.nodes if all(n.name in v for v in self.values)]

    @torch.no_grad()
    def outputs(self, gm: fx.GraphModule) -> list[torch.Tensor]:
        """``gm``'s outputs on the batches, run from the last of the base's cuts before
        its first node that differs from the base's (whole where none is shared)."""
        start = self.start(gm)
        if start is None:
            return [gm(x) for x in self.batches]
        nodes = list(gm.graph.nodes)
        at = next(i for i, n in enumerate(nodes) if n.name == start)
        out = []
        for x, kept in zip(self.batches, self.values, strict=True):
            # nothing after the cut reads a node before it but weights (get_attr), which
            # the interpreter fetches; the rest are never read
            env = {n: None for n in nodes[:at] if n.op != "get_attr"}
            env[nodes[at]] = kept[start].clone()  # its readers may write into it
            out.append(fx.Interpreter(gm).run(x, initial_env=env))
        return out

    def start(self, gm: fx.GraphModule) -> str | None:
        """The last of the base's cuts that ``gm`` has unchanged, with everything before
        it; None if there is none."""
        mine, theirs = dict(self.base.named_modules()), dict(gm.named_modules())
        last, cuts = None, set(self.cuts)
        for a, b in zip(self.base.graph.nodes, gm.graph.nodes, strict=False):
            if not _same(a, b, mine, theirs, self.base, gm):
                break
            if a.name in cuts:
                last = a.name
        return last


class _Keeper(fx.Interpreter):
    """Runs a graph keeping the outputs of the nodes named in ``names``."""

    def __init__(self, gm: fx.GraphModule, names: set[str], kept: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.names, self.kept = names, kept

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            self.kept[n.name] = out.clone()  # before a later layer writes into it
        return out


def _same(a: fx.Node, b: fx.Node, mine: dict, theirs: dict, base, gm) -> bool:
    """Whether two nodes compute the same: same place and inputs, and for layers and weights,
    the same kind, settings and values."""
    if (a.name, a.op, str(a.target), str(a.args), str(a.kwargs)) != (
        b.name,
        b.op,
        str(b.target),
        str(b.args),
        str(b.kwargs),
    ):
        return False
    if a.op == "call_module":
        return _same_module(mine[a.target], theirs[b.target])
    if a.op == "get_attr":
        x, y = _attr(base, a.target), _attr(gm, b.target)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        return x is y
    return True


def _same_module(p: nn.Module, q: nn.Module) -> bool:
    if p is q:
        return True
    if type(p) is not type(q) or repr(p) != repr(q):
        return False
    ps, qs = p.state_dict(), q.state_dict()
    return ps.keys() == qs.keys() and all(
        ps[k].shape == qs[k].shape and ps[k].dtype == qs[k].dtype and torch.equal(ps[k], qs[k])
        for k in ps
    )
