"""Latency that adds up: a network timed in blocks, a plan's latency predicted as their sum.

A *cut* is a node after which nothing but its own output is live: every later node reads
only it (and weights), and not a layer whose one reader is an activation. Between two cuts
lies a *block* (an inception module, a residual block, a run of layers) that runs alone
from a tensor of the cut's shape. The cuts used are those of the base network (its exact
merges applied) that every option keeps (found by name or by their reader, at the same
shape), coarsened so that a block is split only where options touch its parts differently
(a block no option touches is one block, however many layers it has).

Each block is timed alone in the target runtime, once per form the options give it, each
form interleaved with the base's block it replaces (in pairs: among hundreds of others a
block's weights would be evicted from the caches between its runs, which they are not when
it runs deployed; benchmarks/results/interleave_cache.md); its latency is cached by its
structure (layers, their shapes, its input shape), the runtime, threads, CPU and library
versions. A plan's predicted latency is the sum of its blocks plus a constant plus a term
in its weights: ``constant + sum + ms_per_mb * weight MB``. Timed alone in pairs, a small
block's weights stay in the core's own cache between runs; in a whole network every
block's weights are evicted by the others' and come from farther away. The constant (a
runtime's per-call overhead, fusions across a cut) and the price per MB of weights are
fitted by least squares of the relative error on whole networks: the base and a few plans
timed whole beside it (:meth:`BlockLatency.calibrate`). With a constant alone (the whole
base less its blocks), GoogLeNet at 64x64 in ONNX Runtime was predicted too slow for every
plan, by up to 40%: the constant held the base's 24 MB of weights fetched from farther away
and did not shrink with a plan's weights (docs/results.md, "Blocks in pairs"). Options that touch different
blocks add up in this model; options in the same block are timed together when a plan
combines them (:meth:`BlockLatency.predict`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import operator
import os
import statistics
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..files import write_json
from ..machine import machine_info
from ..profiling.bench import latencies
from ..profiling.timing import IN_A_ROW
from ..transforms.depth import activation_node

#: Node kinds that compute (placeholders, weights and the output do not).
COMPUTE = ("call_module", "call_function", "call_method")
#: Sessions each block and the base network run in (see ``select.SESSIONS``).
SESSIONS = 3
#: Sessions the plans timed whole to calibrate the model run in (``BlockLatency.calibrate``):
#: as many as fit in :data:`CALIBRATION_SECONDS`, from :data:`SESSIONS` up to this. The line
#: through five networks carries their noise into every prediction: GoogLeNet at 64x64 in
#: ExecuTorch, calibrated in 3 sessions, ran 15-24% over its blocks in the fitted plans and
#: 11-14% in ten other sets measured in 9, and missed the worst of them by 15%
#: (benchmarks/results/latency_model.md). Small networks are quick to time whole; ResNet-50 at
#: 224 in 9 sessions took its selection from 3.9 to 6.1 minutes (benchmarks/select_time.py;
#: that row is at commit 07f8447: docs/results.md, "Calibrated in nine sessions").
CALIBRATION_SESSIONS = 9
#: Seconds the whole-network timing of a calibration aims at (sessions are added up to it).
CALIBRATION_SECONDS = 30.0


#: Runtimes that run int8 models: their networks are not cut right after a max-pool
#: (:func:`cut_nodes`), and their blocks run from random tensors, not zeros (:func:`split`).
QUANTIZED_RUNTIMES = ("ort-int8",)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)
_MAX_POOL_FUNCTIONS = (F.max_pool2d, F.adaptive_max_pool2d, torch.max_pool2d)


def _max_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _MAX_POOLS)
    return node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS


def cut_nodes(gm: fx.GraphModule, *, after_max_pools: bool = True) -> list[str]:
    """Names of the nodes after which only their own output is live, in graph order; not
    a layer whose one reader is an activation (runtimes fuse it into the layer: cut apart,
    each block would run it on its own, a pass over the whole tensor the network never
    makes).

    ``after_max_pools=False``: not a max-pool either. In int8 ONNX Runtime a max-pool runs
    on uint8 or in float depending on the layers on both sides of it: in GoogLeNet at 64x64
    the one that reads the stem's pool2 ran on uint8 in the network (0.2 ms) and in float
    in its block alone (0.006 ms), and every plan that kept the stem's LRNs was predicted
    about 5% fast, every plan without them up to 14% slow (docs/results.md, "A latency
    budget in int8")."""
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    modules = dict(gm.named_modules())
    cuts, reach = [], -1  # reach: the furthest node any earlier node's output feeds
    for i, n in enumerate(nodes):
        users = list(n.users)
        fused = len(users) == 1 and activation_node(users[0], modules)
        pool = not after_max_pools and _max_pool(n, modules)
        if n.op in COMPUTE and reach <= i and users and not fused and not pool:
            cuts.append(n.name)
        if n.op != "get_attr":
            reach = max([reach, *(pos[u] for u in n.users)])
    return cuts


@dataclass
class Block:
    """The nodes after cut ``start`` (None: from the input) up to cut ``end``, as a module."""

    start: str | None
    end: str
    module: fx.GraphModule
    input: torch.Tensor
    key: str

    @property
    def name(self) -> str:
        return f"{self.start or 'input'}..{self.end}"


def _segment(gm: fx.GraphModule, start: str | None, end: str) -> fx.GraphModule:
    graph, env = fx.Graph(), {}
    nodes = {n.name: n for n in gm.graph.nodes}
    if start is not None:
        env[nodes[start]] = graph.placeholder(start)
    inside = start is None

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:  # a weight read here but defined before the block
            if a.op != "get_attr":
                raise ValueError(f"{a.name} is read across the cut {start}")
            env[a] = graph.node_copy(a)
        return env[a]

    for n in gm.graph.nodes:
        if inside and n.op != "output":
            env[n] = graph.node_copy(n, arg)
        if n.name == (start or ""):
            inside = True
        if n.name == end:
            break
    graph.output(env[nodes[end]])
    block = fx.GraphModule(gm, graph)
    if start is not None:
        _not_in_place(block, env[nodes[start]])
    return block


#: In-place functions and methods, and their out-of-place forms.
_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    torch.relu_: torch.relu,
    "relu_": "relu",
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "clamp_": "clamp",
    "hardtanh_": "hardtanh",
    "sigmoid_": "sigmoid",
}


def _not_in_place(block: fx.GraphModule, x: fx.Node) -> None:
    """Make the nodes of ``block`` that would write into its input ``x`` out of place.

    A layer may work in place on what the layer before it made (a ReLU6 after a conv); first
    in a block, it would write into the block's input, which ``torch.export`` keeps as a
    copy back into the caller's tensor, a cost the network never pays (ExecuTorch: two
    portable copies of the activation; docs/results.md, "Blocks that mean the same place").
    The network's own modules are left as they are."""
    for n in list(x.users):
        if n.args[:1] != (x,):
            continue
        if n.op == "call_module":
            module = block.get_submodule(n.target)
            if getattr(module, "inplace", False):
                module = copy.deepcopy(module)
                module.inplace = False
                block.set_submodule(n.target, module)
        elif n.kwargs.get("inplace"):
            n.kwargs = {**n.kwargs, "inplace": False}
        elif n.op in ("call_function", "call_method") and n.target in _OUT_OF_PLACE:
            n.target = _OUT_OF_PLACE[n.target]
    block.recompile()


def _attr(module: nn.Module, target: str):
    """A ``get_attr`` node's tensor: ``target`` is a dotted path (``layer.scale.gamma``)."""
    return functools.reduce(getattr, target.split("."), module)


def _structure(block: fx.GraphModule, shape: Sequence[int]) -> str:
    """A digest of what a block's latency depends on: its layers and their wiring, not the
    names or the weights' values."""
    index, rows = {}, [list(shape)]
    modules = dict(block.named_modules())
    for i, n in enumerate(block.graph.nodes):
        index[n] = i

        def plain(a):
            return f"%{index[a]}" if isinstance(a, fx.Node) else repr(a)

        if n.op == "call_module":
            target = repr(modules[n.target])
        elif n.op in ("placeholder", "output"):
            target = ""
        elif n.op == "get_attr":
            target = str(tuple(_attr(block, n.target).shape))
        else:
            target = getattr(n.target, "__name__", str(n.target))
        args = fx.node.map_aggregate(n.args, plain)
        kwargs = fx.node.map_aggregate(n.kwargs, plain)
        rows.append([n.op, target, repr(args), repr(kwargs)])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:20]


def split(
    gm: fx.GraphModule,
    example: torch.Tensor,
    cuts: Sequence[str],
    *,
    propagated: bool = False,
    random_inputs: bool = False,
) -> list[Block]:
    """``gm`` as blocks between the ``cuts`` it has (in graph order), the last ending at
    its output; the first runs from ``example``, the others from zeros of their input's
    shape, or with ``random_inputs`` from a seeded normal tensor (the same for every form of
    a block). ONNX Runtime's uint8 max-pool is faster on the constant activations zeros
    give (GoogLeNet's pool2 at 64x64: 0.09 ms, 0.25 ms in the network); the float runtimes'
    blocks were measured from zeros (in ExecuTorch GoogLeNet's blocks summed the same from
    either at 64x64). ``propagated``: ``gm``'s shapes were just propagated from ``example``
    (by :func:`_cut_keys`), not to be run again."""
    if not propagated:
        ShapeProp(gm).propagate(example)
    nodes = {n.name: n for n in gm.graph.nodes}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node):
        raise ValueError("blocks need a network with a single output")
    # a cut carries one tensor (not a tuple, as a split's output is)
    own = {c for c in cut_nodes(gm) if isinstance(nodes[c].meta.get("tensor_meta"), TensorMetadata)}
    ends = [c for c in cuts if c in own and c != last.name] + [last.name]
    blocks, start = [], None
    for end in ends:
        module = _segment(gm, start, end)
        shape = None if start is None else nodes[start].meta["tensor_meta"].shape
        if shape is None:
            x = example
        elif random_inputs:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        else:
            x = torch.zeros(shape)
        blocks.append(Block(start, end, module, x, _structure(module, x.shape)))
        start = end
    return blocks


def _cut_keys(
    gm: fx.GraphModule, example: torch.Tensor, *, after_max_pools: bool = True
) -> dict[str, set[tuple]]:
    """``gm``'s cuts (in graph order; its shapes propagated from ``example``), each with the
    keys it is found by in another form of the network: its own name and its first
    reader's, each with its tensor's shape. A
    merge may give its node the name of a layer it replaced (a depth chain its first
    conv's: in the base that node is the chain's wide expansion, in the option its narrow
    output), or take away the node a cut was (a residual sum folded into the chain's conv):
    the same name at another shape is not the same cut; the same reader at the same shape
    is. Only a layer (a module) names a reader: a function's node is numbered in graph
    order (``split_6``), and another form of the network, with a split more or less before
    it, gives that number to another node (GoogLeNet at 64x64: inception 4e's fused heads
    without their branch merge, 5a's split took the name of 4e's, at the same shape)."""
    ShapeProp(gm).propagate(example)
    nodes = list(gm.graph.nodes)
    pos, by_name = {n: i for i, n in enumerate(nodes)}, {n.name: n for n in nodes}
    keys = {}
    for c in cut_nodes(gm, after_max_pools=after_max_pools):
        node = by_name[c]
        shape = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))
        reader = min(node.users, key=pos.__getitem__)
        keys[c] = {("node", c, shape)}
        if reader.op == "call_module":
            keys[c].add(("reader", reader.target, shape))
    return keys


def _find(keys: set[tuple], cuts: dict[str, set[tuple]]) -> str | None:
    """The cut of ``cuts`` known by one of ``keys``."""
    return next((c for c, k in cuts.items() if k & keys), None)


def weights_mb(module: nn.Module) -> float:
    """The weights a network reads each run (parameters and buffers), in MB (10^6 bytes)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def _cache_file(key: dict) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deeprebirth"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "blocks" / f"{digest}.json"


def fit_beyond(
    mbs: Sequence[float],
    blocks_ms: Sequence[float],
    measured_ms: Sequence[float],
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[float, float]:
    """``(ms_per_mb, constant)``: what whole networks take beyond their blocks' sum, fitted as
    ``constant + ms_per_mb * weight MB`` through networks of ``mbs`` MB of weights whose blocks
    sum to ``blocks_ms`` and which measured ``measured_ms``.

    Least squares of the relative error (each residual over its network's latency): a
    timing's noise is a share of it, and the budget and the model's check are shares too.
    Unweighted, the slow plans' residuals set the line: the trained GoogLeNet at 64x64 in
    int8, whose plans without LRN run 5x faster than those with, refitted so, is off by up to
    21% where this fit is off by 17% (benchmarks/results/latency_fit.md). A negative price
    (weights cannot make a network faster: noise) is taken as 0, with the weighted mean as
    the constant."""
    beyond = np.subtract(measured_ms, blocks_ms)
    w = 1 / np.asarray(measured_ms, dtype=float)
    if len(set(mbs)) < 2:
        return 0.0, float(np.average(beyond, weights=w**2))
    slope, intercept = np.polyfit(mbs, beyond, 1, w=w)
    if slope >= 0:
        return float(slope), float(intercept)
    log(f"weights priced at {slope:.3f} ms per MB: taken as 0")
    return 0.0, float(np.average(beyond, weights=w**2))


class BlockLatency:
    """Block latencies of one network on one runtime; predicts a plan's latency.

    ``fit`` chooses the cuts and times the base network with its blocks and every option's
    blocks; ``calibrate`` fits what a whole network takes beyond its blocks (a constant and
    a price per MB of weights) on plans timed whole; ``predict`` sums a network's blocks, timing the ones not seen yet
    (scaled by the base blocks timed beside them, so that a later run's drift does not
    enter), plus ``constant_ms`` plus ``ms_per_mb`` times the network's weights (MB).
    """

    def __init__(
        self,
        *,
        runtime: str = "ort",
        threads: int = 1,
        runs: int = 15,
        use_cache: bool = True,
        log: Callable[[str], None] = lambda msg: None,
    ):
        self.runtime, self.threads, self.runs, self.log = runtime, threads, runs, log
        #: an int8 runtime: no cut after a max-pool, blocks run from random tensors
        self.quantized = runtime in QUANTIZED_RUNTIMES
        machine = machine_info()
        self.cache_key = {
            "runtime": runtime,
            "threads": threads,
            "runs": runs,
            "sessions": SESSIONS,
            "timed": f"beside the base's block, {IN_A_ROW} runs per turn",
            # int8 blocks: cut and run as :data:`QUANTIZED_RUNTIMES` says, in and out quantized
            **({"blocks": "random inputs, no cut after max-pools"} if self.quantized else {}),
            **{k: machine[k] for k in ("cpu", "isa", "torch", "onnxruntime", "executorch")},
        }
        self.cache = _cache_file(self.cache_key) if use_cache else None
        self.table: dict[str, float] = {}
        if self.cache is not None and self.cache.is_file():
            self.table = json.loads(self.cache.read_text())["blocks"]
        #: the base's cuts the blocks end at, and the keys each cut is found by in a plan
        self.cuts: list[str] = []
        self.cut_keys: dict[str, set[tuple]] = {}
        self.base: list[Block] = []
        self.constant_ms = 0.0
        self.ms_per_mb = 0.0
        #: each plan the model was calibrated on: its weights, blocks, measured, predicted
        self.calibration: list[dict] = []
        #: the sessions the calibration's plans were timed whole in
        self.calibration_sessions = 0
        self.base_ms = 0.0
        self.base_blocks_ms = 0.0
        self.base_net: fx.GraphModule | None = None
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def fit(
        self,
        base: fx.GraphModule,
        others: Sequence[fx.GraphModule],
        example: torch.Tensor,
        wholes: dict[str, nn.Module] | None = None,
        *,
        changed_only: bool = False,
    ) -> dict[str, float]:
        """Cuts that ``base`` and every one of ``others`` (the options applied alone) have,
        coarsened; every block form timed; the constant from ``base`` timed whole. Returns
        the latencies (ms) of ``wholes``, networks timed whole in the same run.

        ``changed_only``: time only the blocks some option changes and the base's blocks
        they replace, no network whole (to compare forms of a block, not to predict a
        network: ``base_ms`` and the constant stay unset)."""
        self.cut_keys = self._cut_keys(base, example)
        found = [self._cut_keys(gm, example) for gm in others]
        shared = [c for c, k in self.cut_keys.items() if all(_find(k, f) for f in found)]
        finest = split(base, example, shared, propagated=True, random_inputs=self.quantized)
        fine, base_keys = [b.end for b in finest[:-1]], [b.key for b in finest]
        touched: list[set[int]] = [set() for _ in base_keys]
        for i, gm in enumerate(others):
            for j, b in enumerate(self._split(gm, example, fine, found[i])[0]):
                if j < len(base_keys) and b.key != base_keys[j]:
                    touched[j].add(i)
        # a cut is kept where the options touching the blocks on its two sides differ
        self.cuts = [c for j, c in enumerate(fine) if touched[j] != touched[j + 1]]
        self.base = split(base, example, self.cuts, propagated=True, random_inputs=self.quantized)
        # each form beside the base's block it replaces (the first it is found at)
        refs: dict[str, str] = {}
        todo = {b.key: b for b in self.base}
        for gm, keys in zip(others, found, strict=True):
            forms, places = self._split(gm, example, self.cuts, keys)
            for b in forms:
                if b.key not in todo:
                    todo[b.key], refs[b.key] = b, places[b.key]
        # The base's blocks are always timed (references for the forms, and for the
        # constant); forms the cache holds are scaled by how the base's blocks moved since.
        replaced = set(refs.values())
        fresh = {b.key: b for b in self.base if not changed_only or b.key in replaced}
        fresh |= {k: b for k, b in todo.items() if k not in self.table and k in refs}
        if changed_only and wholes:
            raise TypeError("changed_only times no network whole")
        wholes = {} if changed_only else {"<base>": base, **(wholes or {})}
        models = {k: (m, example) for k, m in wholes.items()}
        models |= {k: (b.module, b.input) for k, b in fresh.items()}
        beside = {k: "<base>" for k in wholes if k != "<base>"}
        beside |= {k: refs[k] for k in fresh if k in refs}
        networks = f"{len(wholes)} networks and " if wholes else ""
        self.log(
            f"timing {networks}{len(fresh)} block forms on {self.runtime}, each beside the "
            f"base's ({len(self.base)} blocks in the base network, "
            f"{sum(k in refs and k not in fresh for k in todo)} forms from the cache)"
        )
        t = self._time(models, beside)
        seen = [t[k].median_ms / self.table[k] for k in fresh if k in self.table]
        drift = statistics.median(seen) if seen else 1.0
        self.table |= {k: self.table[k] * drift for k in todo if k not in fresh and k in self.table}
        self.table |= {k: t[k].median_ms for k in fresh}
        self._save()
        if changed_only:
            return {}
        self.base_net, self.base_ms = base, t["<base>"].median_ms
        self.base_blocks_ms = sum(self.table[b.key] for b in self.base)
        self.ms_per_mb, self.constant_ms = 0.0, self.base_ms - self.base_blocks_ms
        self.calibration = []
        self.log(f"base {self.base_ms:.3f} ms, its blocks {self.base_blocks_ms:.3f} ms")
        return {k: t[k].median_ms for k in wholes if k != "<base>"}

    def _time(self, models: dict, beside: dict[str, str], sessions: int = SESSIONS) -> dict:
        """Each model timed beside its reference (pairs keep each in warm caches, as it runs
        deployed: timed among hundreds of others, a block waits on memory for its weights)."""
        return latencies(
            models,
            runtimes=[self.runtime],
            threads=self.threads,
            runs=self.runs,
            sessions=sessions,
            beside=beside,
        )[self.runtime]

    def _save(self) -> None:
        if self.cache is not None:
            write_json(self.cache, {"key": self.cache_key, "blocks": self.table})

    def blocks_ms(self, gm: fx.GraphModule, example: torch.Tensor) -> list[dict]:
        """``gm``'s blocks with their latencies (ms) as timed alone; blocks not timed yet
        are timed beside the base's blocks and scaled to the table by them."""
        blocks, places = self._split(gm, example, self.cuts)
        new = {b.key: b for b in blocks if b.key not in self.table}
        if new:
            refs = {k: r for k, r in places.items() if k in new}
            models = {k: (b.module, b.input) for k, b in new.items()}
            models |= {b.key: (b.module, b.input) for b in self.base if b.key in refs.values()}
            self.log(f"timing {len(new)} new blocks on {self.runtime}")
            t = self._time(models, refs)
            # scaled to the table by the base block each was timed beside
            self.table |= {
                k: t[k].median_ms * self.table[r] / t[r].median_ms for k, r in refs.items()
            }
            self._save()
        return [{"block": b.name, "ms": self.table[b.key]} for b in blocks]

    def predict(self, gm: fx.GraphModule, example: torch.Tensor) -> tuple[float, list[dict]]:
        """Predicted latency of ``gm`` (ms) and its blocks (as timed alone)."""
        rows = self.blocks_ms(gm, example)
        total = sum(r["ms"] for r in rows)
        return self.constant_ms + total + self.ms_per_mb * weights_mb(gm), rows

    def calibrate(self, networks: Sequence[fx.GraphModule], example: torch.Tensor) -> list[dict]:
        """Fit the constant and the price of weights: ``networks`` (plans of the base, as
        far apart as the options go) are timed whole beside the base in up to
        :data:`CALIBRATION_SESSIONS` sessions (as many as fit in :data:`CALIBRATION_SECONDS`),
        scaled to the base's latency from :meth:`fit`; what each whole network takes beyond
        its blocks is fitted as ``constant + ms_per_mb * weight MB`` through them and the base
        (:func:`fit_beyond`). Returns each network's weights (MB), blocks' sum, measured and
        predicted latency (ms), the base's first."""
        if self.base_net is None:
            raise RuntimeError("fit the block model before calibrating it")
        mbs = [weights_mb(gm) for gm in (self.base_net, *networks)]
        sums = [self.base_blocks_ms]
        sums += [sum(r["ms"] for r in self.blocks_ms(gm, example)) for gm in networks]
        models = {"<base>": (self.base_net, example)}
        models |= {f"<plan {i}>": (gm, example) for i, gm in enumerate(networks)}
        beside = {k: "<base>" for k in models if k != "<base>"}
        # a session: each plan and the base, runs times each (ms)
        session_s = 2 * self.runs * self.base_ms * len(networks) / 1000
        fit_in = int(CALIBRATION_SECONDS / session_s) if session_s > 0 else CALIBRATION_SESSIONS
        self.calibration_sessions = max(SESSIONS, min(CALIBRATION_SESSIONS, fit_in))
        self.log(
            f"timing {len(networks)} plans whole on {self.runtime}, beside the base "
            f"({self.calibration_sessions} sessions)"
        )
        t = self._time(models, beside, sessions=self.calibration_sessions)
        measured = [self.base_ms]
        measured += [
            self.base_ms * t[k].median_ms / t["<base>"].median_ms for k in models if k != "<base>"
        ]
        per_mb, constant = fit_beyond(mbs, sums, measured, log=self.log)
        self.ms_per_mb, self.constant_ms = per_mb, constant
        self.log(
            f"whole network = its blocks {constant:+.3f} ms + {per_mb:.4f} ms per MB of weights"
        )
        self.calibration = [
            {
                "weights_mb": w,
                "blocks_ms": x,
                "measured_ms": y,
                "predicted_ms": constant + x + per_mb * w,
            }
            for w, x, y in zip(mbs, sums, measured, strict=True)
        ]
        return self.calibration

    @property
    def calibration_miss(self) -> float:
        """The largest relative error of the model on the plans it was calibrated on (0 before
        :meth:`calibrate`)."""
        return max(
            (abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in self.calibration), default=0.0
        )

    def _cut_keys(self, gm: fx.GraphModule, example: torch.Tensor) -> dict[str, set[tuple]]:
        """:func:`_cut_keys`, once per network and input shape: a selection splits each
        option's network several times (fitting, its saving, calibrating), and propagating
        shapes through a ResNet-50 at 224x224 takes about as long as running it. The
        networks are not changed once split."""
        shape = tuple(example.shape)
        known = self._keys.get(gm)
        if known is None or known[0] != shape:
            self._keys[gm] = known = (
                shape,
                _cut_keys(gm, example, after_max_pools=not self.quantized),
            )
        return known[1]

    def split(self, gm: fx.GraphModule, example: torch.Tensor) -> list[Block]:
        """``gm`` as blocks at the model's cuts (found in ``gm`` by name or by what reads
        them, at the same shape)."""
        return self._split(gm, example, self.cuts)[0]

    def _split(
        self,
        gm: fx.GraphModule,
        example: torch.Tensor,
        cuts: Sequence[str],
        keys: dict[str, set[tuple]] | None = None,
    ) -> tuple[list[Block], dict[str, str]]:
        """``gm`` as blocks at the base's ``cuts`` (``keys``: ``gm``'s :func:`_cut_keys` at
        ``example``, which propagated its shapes; found if not given), and for each block the base's block it stands in for: the one ending at the
        same cut (the last where a cut has gone)."""
        keys = self._cut_keys(gm, example) if keys is None else keys
        order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        at, last = {}, -1
        for c in cuts:  # found in graph order, as the base has them (else not found)
            node = _find(self.cut_keys[c], keys)
            if node is not None and order[node] > last:
                at[node], last = c, order[node]
        blocks = split(gm, example, list(at), propagated=True, random_inputs=self.quantized)
        if not self.base:
            return blocks, {}
        if len(blocks) == len(self.base):
            return blocks, {b.key: r.key for b, r in zip(blocks, self.base, strict=True)}
        ends = {r.end: r.key for r in self.base}
        return blocks, {b.key: ends.get(at.get(b.end, b.end), self.base[-1].key) for b in blocks}
