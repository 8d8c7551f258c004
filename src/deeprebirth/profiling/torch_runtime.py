"""PyTorch eager: whole-model latency and time per layer."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from torch import fx

from ..graph.taxonomy import node_kind
from .timing import Timing, measure


class _LayerTimer(fx.Interpreter):
    """Runs the graph node by node, recording each layer's wall time."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def run_node(self, n: fx.Node):
        if n.op in ("placeholder", "output", "get_attr"):
            return super().run_node(n)
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.samples[n.name].append(time.perf_counter() - t0)
        return out


def torch_latency(model: torch.nn.Module, example: torch.Tensor, runs: int, warmup: int) -> Timing:
    with torch.inference_mode():
        return measure(lambda: model(example), runs, warmup)


def torch_layer_times(
    gm: fx.GraphModule, example: torch.Tensor, runs: int, warmup: int
) -> list[dict]:
    """Median time of each layer over ``runs`` node-by-node executions of the graph.

    Returns one row per node, in graph order: ``{"name", "kind", "op", "ms"}``.
    """
    modules = dict(gm.named_modules())
    timer = _LayerTimer(gm)
    with torch.inference_mode():
        for _ in range(warmup):
            timer.run(example)
        timer.samples.clear()
        for _ in range(runs):
            timer.run(example)
    rows = []
    for n in gm.graph.nodes:
        if n.name not in timer.samples:
            continue
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "?")
        op = type(modules[n.target]).__name__ if n.op == "call_module" else str(target)
        rows.append(
            {
                "name": str(n.target) if n.op == "call_module" else n.name,
                "kind": node_kind(n, modules),
                "op": op,
                "ms": statistics.median(timer.samples[n.name]) * 1e3,
            }
        )
    return rows
