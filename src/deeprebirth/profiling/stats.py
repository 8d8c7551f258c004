"""Static costs of a model: MACs, parameters, peak activation memory."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (torch's FLOP counter / 2)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _StorageRecorder(fx.Interpreter):
    """Runs the graph keeping every value alive, recording which storages each node outputs."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)
        self.storages: dict[fx.Node, dict[int, int]] = {}
        self._params = {p.untyped_storage().data_ptr() for p in gm.parameters()}
        self._params |= {b.untyped_storage().data_ptr() for b in gm.buffers()}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op != "get_attr":
            self.storages[n] = {
                t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tree_leaves(out)
                if isinstance(t, torch.Tensor)
                and t.untyped_storage().data_ptr() not in self._params
            }
        return out


def peak_activation_bytes(gm: fx.GraphModule, example: torch.Tensor) -> int:
    """Peak bytes of live activations when the graph runs node by node, input included.

    A tensor's storage is live from the node that creates it until the last node that
    reads it (views and in-place layers share their input's storage and extend its life);
    weights are not counted. This is the run-time memory the paper's merges reduce.
    """
    recorder = _StorageRecorder(gm)
    with torch.inference_mode():
        recorder.run(example)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    size: dict[int, int] = {}
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    for node, stores in recorder.storages.items():
        last_use = max((order[u] for u in node.users), default=order[node])
        for ptr, nbytes in stores.items():
            size[ptr] = nbytes
            start[ptr] = min(start.get(ptr, order[node]), order[node])
            end[ptr] = max(end.get(ptr, last_use), last_use)
    peak = 0
    for i in range(len(order)):
        peak = max(peak, sum(size[p] for p in size if start[p] <= i <= end[p]))
    return peak
