"""Plan selection under a latency budget, measured on the target runtime.

1. **Options.** Every learned plan entry (streamline, branch and block merges), every
   depth chain that saves MACs (``drop_activation``, ``merge_convs``) and every Tucker-2
   decomposition at each of a few ranks. Entries that only apply on top of another (a
   block merge needs its branch's head pool gone) form one group with it, and chains that
   share a layer form one group, so each *group* offers mutually exclusive options: off,
   or one of its closed subsets / non-overlapping sets of chains / ranks. Tucker on a
   conv a chain takes is one more option of the chain's group. Other exact merges are
   always applied: they cost no accuracy.
2. **Lookup table.** Each option is applied alone to the exact-only model (the base). By
   default in ONNX Runtime (``latency_model="blocks"``) the network is cut into blocks and each block is
   timed alone, once per form the options give it; an option's latency is the sum of its
   blocks plus a constant and a price per MB of its weights, both fitted on plans timed
   whole (``deeprebirth.planning.blocks``), so the savings of options in different blocks
   add up. With ``"networks"`` each option's whole network is
   timed interleaved with the base alone (not among all the others, which evicts its
   weights from the caches), in :data:`SESSIONS` passes with new sessions each (a session,
   and a whole run, can be a few percent off: as much as a small option saves); the saving
   is base minus option, each pass scaled to the same base, medians over the passes. Both
   are cached on disk (per block structure, or per model and input; and runtime, threads,
   CPU and library versions).
3. **Cost.** The option's reconstruction error at the network output, before tuning:
   ``||f_option(x) - f(x)||^2 / ||f(x)||^2`` on a few calibration batches; or, given a
   ``cost`` function (the pipeline's ``select.cost_batches``), what it says of the option's
   entries (the same error after a short tuning).
4. **Choice.** Savings and costs are taken as additive, and the cheapest set reaching
   the budget is found by dynamic programming over the groups (a multiple-choice
   knapsack on savings in 1/``resolution`` steps of what is needed, rounded down so the
   prediction errs on the slow side). Greedy by saving per cost is simpler but can miss
   the optimum when one expensive option replaces several cheap ones; the DP cannot, on
   its grid, and costs microseconds at these sizes.

5. **Correction.** Savings are not exactly additive (options in one block interact, and
   whole-network timings are noisy), so the choice is judged again: its blocks, options
   in one block timed together (``"networks"``: measured whole, relative to the base beside
   it); when it misses the budget, the saving asked of the table is scaled up by
   predicted/achieved and the choice made again (at most ``correction_rounds``).

The prediction, every round's measurement and the table are all reported.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DeepRebirthError
from ..files import write_json
from ..machine import machine_info
from ..plan import Plan, PlanConfig, PlanEntry
from ..profiling.bench import latencies
from ..profiling.timing import IN_A_ROW
from ..transforms import MERGES, apply_plan
from ..transforms.runner import apply_entries
from .blocks import BlockLatency, weights_mb
from .discover import make_plan
from .from_cuts import BaseOutputs

#: Rank ratios tried for each Tucker decomposition, besides the EVBMF rank.
RANK_RATIOS = (0.25, 0.5)
#: Largest group of interdependent merges whose every subset is an option (2^n - 1 of them).
MAX_GROUP_SUBSETS = 4
#: Most options a group of overlapping depth chains offers (its non-overlapping sets).
MAX_DEPTH_OPTIONS = 32
#: Sessions a judged latency is the median of: the base in the lookup table, the chosen
#: plan beside the base, the selected plan beside the original.
SESSIONS = 3
#: How the options' latencies are measured: ``blocks`` (each block the options change timed
#: alone, a plan's latency their sum: ``deeprebirth.planning.blocks``) or ``networks``
#: (each option applied alone to the whole network, timed whole).
LATENCY_MODELS = ("blocks", "networks")
#: Where a selection can time its options (batch 1): ``ort-int8`` is ONNX Runtime with every
#: network and block quantized to int8 as ``export --int8`` writes it (the budget is for the
#: int8 model: merges and Tucker ranks save other shares of its time than of the float one's).
SELECT_RUNTIMES = ("ort", "ort-int8", "executorch", "torch")
#: The latency model a runtime gets unless one is asked for: blocks where they were checked
#: against whole networks (benchmarks/results/latency_model.md: ONNX Runtime and ExecuTorch,
#: GoogLeNet, MobileNetV2 and ResNet-50 at 64 and 224), guarded by
#: :data:`MAX_CALIBRATION_MISS`; whole networks in PyTorch eager (blocks not checked there).
DEFAULT_LATENCY_MODEL = {
    "ort": "blocks",
    "ort-int8": "blocks",
    "executorch": "blocks",
    "torch": "networks",
}
#: Where the block model misses one of the plans it was fitted on (timed whole) by more than
#: this share, a selection by the default model times each choice whole (beside the base)
#: instead of summing its blocks; the blocks' savings still choose. (Until 2026-12-07 it timed
#: every option on the whole network instead: on GoogLeNet at 64x64 in int8 that took 21
#: minutes, and savings of whole networks, smaller than their drift, summed to -5 ms.) Measured
#: (benchmarks/results/latency_model.md): in ORT the fitted plans were missed by 1.5-8.8%
#: and the worst of 10 other sets by 1.1-11.1%; MobileNetV2 in ExecuTorch at 64, before its
#: blocks were cut at its inverted residuals' outputs, missed one fitted plan by 23% and
#: other sets by up to 19% (the rule would have fallen back). It replaces a rule on the
#: blocks' sum over the whole network (above 1.3x, from block forms timed all at once: in
#: pairs every network's blocks came within 0.7-1.1x of it in ORT).
MAX_CALIBRATION_MISS = 0.10
#: Plans timed whole to fit the block model's constant and price of weights
#: (``BlockLatency.calibrate``): every
#: group's fastest option, and this many random option sets besides.
CALIBRATION_SETS = 3
#: What a budget no plan reaches gets: an error, or the fastest plan the options make.
OUT_OF_REACH = ("error", "fastest")


class BudgetError(DeepRebirthError):
    """A latency budget no plan reaches. Where the options were timed, ``fastest`` is the
    plan with every group's fastest option and ``fastest_ms`` what the table predicts for it
    (else None)."""

    def __init__(self, message: str, fastest: Plan | None = None, fastest_ms: float | None = None):
        super().__init__(message)
        self.fastest, self.fastest_ms = fastest, fastest_ms


@dataclass
class Option:
    """One way to configure a group: the entries it enables."""

    key: str
    group: str
    entries: list[PlanEntry]
    saving_ms: float = 0.0
    cost: float = 0.0

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "group": self.group,
            "entries": [_entry_key(e) for e in self.entries],
            "saving_ms": self.saving_ms,
            "cost": self.cost,
        }


@dataclass
class Selection:
    plan: Plan
    chosen: list[str]
    options: list[Option]
    runtime: str
    budget_ms: float
    base_ms: float
    predicted_ms: float
    cost: float
    #: The original's latency in the lookup table's run (what a budget share is of).
    original_ms: float | None = None
    #: Each round: what was asked of the table, what it predicted, what was measured.
    rounds: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    #: What the choice aimed at: the budget less the margin asked for.
    target_ms: float | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("plan", "options")}
        d["options"] = [o.to_dict() | {"chosen": o.key in self.chosen} for o in self.options]
        return d


def _tucker_key(entry: PlanEntry) -> str:
    r = entry.geometry.get("ranks")
    return f"{entry.id}@{r[0]}x{r[1]}" if r else entry.id


def choose(
    groups: dict[str, list[Option]], need_ms: float, resolution: int = 400
) -> tuple[list[Option], float]:
    """The cheapest options, at most one per group, whose savings sum to at least ``need_ms``.

    Savings are rounded down to steps of ``need_ms / resolution``. Returns the chosen
    options and their total cost.

    Raises:
        BudgetError: when no choice saves enough; the message gives the most it can save.
    """
    if need_ms <= 0:
        return [], 0.0
    step = need_ms / resolution
    best = sum(
        max((o.saving_ms for o in opts if o.saving_ms > 0), default=0.0) for opts in groups.values()
    )
    inf = float("inf")
    # cost[s]: least cost reaching s steps (capped at `resolution`); picks[s]: the options.
    cost = [0.0] + [inf] * resolution
    picks: list[tuple[Option, ...]] = [()] * (resolution + 1)
    for opts in groups.values():
        new_cost, new_picks = cost[:], picks[:]
        for o in opts:
            gain = int(o.saving_ms / step + 1e-9)
            if gain <= 0:
                continue
            for s in range(resolution + 1):
                if cost[s] == inf:
                    continue
                t = min(resolution, s + gain)
                if cost[s] + o.cost < new_cost[t]:
                    new_cost[t], new_picks[t] = cost[s] + o.cost, (*picks[s], o)
        cost, picks = new_cost, new_picks
    if cost[resolution] == inf:
        raise BudgetError(
            f"no plan saves {need_ms:.2f} ms: the most the options save together is about "
            f"{best:.2f} ms"
        )
    return list(picks[resolution]), cost[resolution]


# --- building the options ----------------------------------------------------------------


def _applies(model, plan: Plan, example, entries: Sequence[PlanEntry]) -> bool:

    _, report = apply_plan(model, with_entries(plan, entries), example)
    return all(e.id in report.applied for e in entries)


def _is_alternative(entry: PlanEntry) -> bool:
    """A depth entry: one of overlapping options, exact or not (``Merge.alternatives``)."""

    merge = MERGES.get(entry.kind)
    return merge is not None and merge.alternatives


def _always_on(entry: PlanEntry) -> bool:
    """Exact merges cost no accuracy and are always applied, except overlapping options."""
    return entry.exact and not _is_alternative(entry)


def with_entries(plan: Plan, chosen: Sequence[PlanEntry]) -> Plan:
    """``plan`` with its exact entries and the ``chosen`` learned ones enabled (Tucker last)."""
    ids = {e.id: e for e in chosen}
    entries = []
    for e in plan.entries:
        if e.kind == "tucker":
            continue
        e = copy.copy(e)
        e.enabled = _always_on(e) or e.id in ids
        entries.append(e)
    entries += [copy.copy(e) for e in chosen if e.kind == "tucker"]
    return Plan(plan.model, plan.input_shape, entries, plan.model_config)


def tucker_plans(
    model: nn.Module, example: torch.Tensor, config: PlanConfig | None = None, **kwargs
) -> list[Plan]:
    """Plans with every kxk conv Tucker-2 decomposed, one per rank choice (EVBMF, then each
    of ``RANK_RATIOS``): the Tucker options of ``select_plan``. ``config`` and ``kwargs``
    as :func:`make_plan` takes them."""
    return [
        make_plan(model, example, config, **{**kwargs, "tucker": True, "rank_ratio": r})
        for r in (None, *RANK_RATIOS)
    ]


def build_options(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    tucker_plans: Sequence[Plan] = (),
) -> list[Option]:
    """Options from the learned entries of ``plan`` and the Tucker entries of ``tucker_plans``.

    A learned entry that does not apply alone is grouped with the earlier learned entries
    it needs (found by trial: the fewest earlier entries with which it applies). So is a
    set of depth chains that needs learned merges first (GoogLeNet's stem chains cross the
    pool and LRN that the streamline merges remove): its group then offers every closed set
    of those merges alone, and with each chain set or Tucker option of the group that
    applies on top of it.
    """
    depth = [e for e in plan.entries if _is_alternative(e) and e.macs_saved > 0]
    learned = [
        e for e in plan.entries if not e.exact and e.kind != "tucker" and not _is_alternative(e)
    ]

    def applies(entries: Sequence[PlanEntry]) -> bool:
        return _applies(model, plan, example, entries)

    needs: dict[str, list[PlanEntry]] = {}
    for i, e in enumerate(learned):
        required = _needs(applies, [e], learned[:i])
        if required is not None:  # else it cannot apply at all: not an option
            needs[e.id] = required
    usable = [e for e in learned if e.id in needs]
    chains, chain_needs = [], {}
    for o in depth_options(depth):
        required = _needs(applies, o.entries, usable)
        if required is not None:
            chains.append(o)
            chain_needs[o.key] = {r.id for r in required}
    # Tucker and a chain are not combined yet: Tucker on a conv a chain takes joins the
    # chain's group (one or the other).
    chain_group = {n: o.group for o in chains for e in o.entries for n in e.nodes}
    seen, tuckers = set(), []
    for tp in tucker_plans:
        for e in tp.entries:
            if e.kind == "tucker" and _tucker_key(e) not in seen:
                seen.add(_tucker_key(e))
                tuckers.append(Option(_tucker_key(e), chain_group.get(e.nodes[0], e.id), [e]))
    # Groups: connected components of the "needs" relation, chains included.
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            k = parent[k]
        return k

    for e in usable:
        for r in needs[e.id]:
            parent[root(e.id)] = root(r.id)
    for o in chains:
        for r in chain_needs[o.key]:
            parent[root(o.group)] = root(r)
    members: dict[str, list[PlanEntry]] = {}
    for e in usable:
        members.setdefault(root(e.id), []).append(e)
    extras: dict[str, list[Option]] = {}
    for o in [*chains, *tuckers]:
        extras.setdefault(root(o.group), []).append(o)
    options = []
    for g in dict.fromkeys([*members, *extras]):
        subsets = _closed_subsets(members.get(g, []), needs)
        options += [Option("+".join(e.id for e in s), g, s) for s in subsets]
        for x in extras.get(g, []):
            for s in [[], *subsets]:
                if not chain_needs.get(x.key, set()) <= {e.id for e in s}:
                    continue
                if s and not applies([*s, *x.entries]):
                    continue
                key = "+".join([*(e.id for e in s), x.key])
                options.append(Option(key, g, [*s, *x.entries]))
    return options


def _needs(
    applies: Callable[[Sequence[PlanEntry]], bool],
    entries: Sequence[PlanEntry],
    candidates: Sequence[PlanEntry],
) -> list[PlanEntry] | None:
    """The fewest of ``candidates`` that ``entries`` need in order to apply, found by trial
    (dropping one at a time what they do without); None when they do not apply at all."""
    if applies(entries):
        return []
    required = list(candidates)
    if not required or not applies([*required, *entries]):
        return None
    for r in list(required):
        trial = [x for x in required if x is not r]
        if applies([*trial, *entries]):
            required = trial
    return required


def _closed_subsets(
    entries: Sequence[PlanEntry], needs: dict[str, list[PlanEntry]]
) -> list[list[PlanEntry]]:
    """Non-empty subsets of a group's learned ``entries`` holding whatever each member needs:
    every subset up to :data:`MAX_GROUP_SUBSETS` entries, else the prefixes in plan order."""
    if len(entries) <= MAX_GROUP_SUBSETS:
        subsets = [
            list(s) for n in range(1, len(entries) + 1) for s in itertools.combinations(entries, n)
        ]
    else:  # too many subsets to measure
        subsets = [list(entries[:n]) for n in range(1, len(entries) + 1)]
    return [s for s in subsets if all(r.id in {e.id for e in s} for e in s for r in needs[e.id])]


def depth_options(entries: Sequence[PlanEntry]) -> list[Option]:
    """Options from depth entries (chains of convs as one conv). Chains that share a layer
    are one group; its options are the sets of its chains that share none, at most
    ``MAX_DEPTH_OPTIONS`` of them per group (those saving the most MACs)."""
    groups: list[list[PlanEntry]] = []
    for e in entries:
        touching = [g for g in groups if any(set(e.nodes) & set(o.nodes) for o in g)]
        merged = [e, *(o for g in touching for o in g)]
        groups = [g for g in groups if g not in touching] + [merged]
    options = []
    for members in groups:
        members.sort(key=lambda e: -e.macs_saved)  # the enumeration starts from the best
        sets = _disjoint_sets(members)
        sets.sort(key=lambda es: -sum(e.macs_saved for e in es))
        name = members[0].id
        for subset in sets[:MAX_DEPTH_OPTIONS]:
            options.append(Option("+".join(e.id for e in subset), name, subset))
    return options


def _disjoint_sets(members: list[PlanEntry], limit: int = 4096) -> list[list[PlanEntry]]:
    """Non-empty sets of ``members`` that share no layer (at most ``limit`` of them)."""
    sets: list[list[PlanEntry]] = []
    stack: list[tuple[list[PlanEntry], int]] = [([], 0)]
    while stack and len(sets) < limit:
        chosen, start = stack.pop()
        if chosen:
            sets.append(chosen)
        taken = {n for c in chosen for n in c.nodes}
        for i in range(len(members) - 1, start - 1, -1):
            if not taken & set(members[i].nodes):
                stack.append(([*chosen, members[i]], i + 1))
    return sets


def group_options(options: Sequence[Option]) -> dict[str, list[Option]]:
    groups: dict[str, list[Option]] = {}
    for o in options:
        groups.setdefault(o.group, []).append(o)
    return groups


# --- measuring ---------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_error(
    model: nn.Module,
    reference: nn.Module | Sequence[torch.Tensor],
    batches: Sequence[torch.Tensor],
) -> float:
    """``||model(x) - reference(x)||^2 / ||reference(x)||^2`` summed over ``batches``;
    ``reference`` is a model or its outputs on ``batches`` (computed once when many models
    are measured against it)."""
    outputs = [model(x) for x in batches]
    if callable(reference):
        reference = [reference(x) for x in batches]
    return output_error(outputs, reference)


def output_error(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """``||output - reference||^2 / ||reference||^2``, each summed over the batches."""
    num = sum((y - r).pow(2).sum().item() for y, r in zip(outputs, reference, strict=True))
    den = sum(r.pow(2).sum().item() for r in reference)
    return num / max(den, 1e-12)


def error_images(input_size: int, batch: int = 16) -> int:
    """How many images an option's error is measured on: 64 at 64x64 and below, about as
    many pixels above it, in whole batches of ``batch``, at least one (16 from 128x128 up:
    at 224x224 each of a ResNet-50's options on 64 images would take longer than its whole
    latency table)."""
    pixels = round(64 * (64 / input_size) ** 2)
    return batch * max(1, min(64 // batch, round(pixels / batch)))


def _cache_file(key: dict) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deeprebirth"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "latency" / f"{digest}.json"


#: An option's cost from its plan entries, instead of its error before tuning.
CostFn = Callable[[Sequence[PlanEntry]], float]


def _entry_key(entry: PlanEntry) -> str:
    return entry.id if entry.kind != "tucker" else _tucker_key(entry)


def _once(cost: CostFn) -> CostFn:
    """``cost``, each set of entries computed once."""
    known: dict[tuple[str, ...], float] = {}

    def once(entries: Sequence[PlanEntry]) -> float:
        key = tuple(_entry_key(e) for e in entries)
        if key not in known:
            known[key] = cost(entries)
        return known[key]

    return once


def _build_options(
    model, example, plan, options, batches, log, cost: CostFn | None = None
) -> tuple[nn.Module, dict]:
    """The base (exact merges only) and each option applied alone to it, by option key;
    fills in each option's cost (``cost`` of its entries, else its error before tuning)."""
    base, _ = apply_plan(model, with_entries(plan, []), example)
    with torch.no_grad():
        reference = [model(x) for x in batches]
    shared = BaseOutputs(base, batches) if cost is None else None
    built = {}
    for i, o in enumerate(options):
        log(f"option {i + 1}/{len(options)}: {o.key}")
        if all(e.kind == "tucker" for e in o.entries):
            # Tucker entries come after every other (with_entries): the base with them
            built[o.key] = copy.deepcopy(base)
            apply_entries(built[o.key], [copy.copy(e) for e in o.entries], example)
        else:
            built[o.key], _ = apply_plan(model, with_entries(plan, o.entries), example)
        if cost is None:
            o.cost = output_error(shared.outputs(built[o.key]), reference)
        else:
            o.cost = cost(o.entries)
    return base, built


def measure_options(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    options: Sequence[Option],
    batches: Sequence[torch.Tensor],
    *,
    runtime: str = "ort",
    threads: int = 1,
    runs: int = 15,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda msg: None,
    cost: CostFn | None = None,
) -> dict[str, float]:
    """Fill in each option's saving and cost; returns the latencies in ms of the base
    (exact merges only) and of the original, measured in the same run as the options.

    Identical sessions differ by a few percent (measured: ONNX Runtime at 64x64), as much as
    one option saves, and so do whole runs on a shared machine (GoogLeNet's original at
    64x64: 3.98 ms in a table, 3.72 ms minutes later). So the table is measured in
    :data:`SESSIONS` passes, each with new sessions; in each pass every model is timed
    interleaved with the base alone (``latencies(beside=...)``: among all of them at once
    each ran with its weights out of the caches, MobileNetV2 at 64x64 nearly twice as
    slow) and scaled by the base beside it; each model's median over the passes is kept."""

    machine = machine_info()
    key = {
        "model": plan.model,
        "config": plan.model_config,
        "input": list(example.shape),
        "runtime": runtime,
        "threads": threads,
        "cpu": machine["cpu"],
        "isa": machine["isa"],
        "torch": machine["torch"],
        "onnxruntime": machine["onnxruntime"],
        "options": sorted(o.key for o in options),
        "passes": SESSIONS,
        "timed": f"beside the base, {IN_A_ROW} runs per turn",  # not tables timed otherwise
    }
    cache = _cache_file(key)
    table = json.loads(cache.read_text()) if use_cache and cache.is_file() else None
    base, built = _build_options(model, example, plan, options, batches, log, cost)
    if table is None:
        models = {"base": (base, example), "original": (model, example)}
        models |= {k: (m, example) for k, m in built.items()}
        passes = []
        for p in range(SESSIONS):
            log(
                f"measuring {len(models)} models on {runtime}, pass {p + 1}/{SESSIONS} "
                f"(each in {runs} runs interleaved with the base)"
            )
            t = latencies(models, runtimes=[runtime], threads=threads, runs=runs, beside="base")[
                runtime
            ]
            passes.append({k: v.median_ms for k, v in t.items()})
        ref = statistics.median(ms["base"] for ms in passes)
        table = {k: statistics.median(ms[k] * ref / ms["base"] for ms in passes) for k in passes[0]}
        write_json(cache, {"key": key, **table})
    else:
        log(f"latency table from the cache: {cache}")
    for o in options:
        o.saving_ms = table["base"] - table[o.key]
    return {"base": table["base"], "original": table["original"]}


def fastest_options(groups: dict[str, list[Option]]) -> list[Option]:
    """Every group's option that saves most, where it saves anything."""
    picked = [max(g, key=lambda o: o.saving_ms) for g in groups.values()]
    return [o for o in picked if o.saving_ms > 0]


def random_option_sets(
    groups: dict[str, list[Option]], n: int, rng: random.Random
) -> list[list[Option]]:
    """``n`` random option sets: each group on with probability 1/2, one of its options at
    random (none empty)."""
    sets: list[list[Option]] = []
    while len(sets) < n:
        picked = [rng.choice(opts) for opts in groups.values() if rng.random() < 0.5]
        if picked:
            sets.append(picked)
    return sets


def calibration_sets(options: Sequence[Option]) -> list[list[Option]]:
    """The option sets a block model is calibrated on: every group's fastest option (the
    far end from the base) and :data:`CALIBRATION_SETS` random sets (seeded: the same
    options give the same sets)."""
    groups = group_options(options)
    fastest = fastest_options(groups)
    sets = [fastest] if fastest else []
    return sets + random_option_sets(groups, CALIBRATION_SETS, random.Random("calibration"))


def measure_blocks(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    options: Sequence[Option],
    batches: Sequence[torch.Tensor],
    *,
    runtime: str = "ort",
    threads: int = 1,
    runs: int = 15,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda msg: None,
    cost: CostFn | None = None,
) -> tuple[dict[str, float], BlockLatency]:
    """Fill in each option's saving and cost from the blocks it changes, timed alone
    (:class:`~deeprebirth.planning.blocks.BlockLatency`); returns the latencies in ms of the
    base and of the original, timed whole beside the blocks, and the block model."""
    base, built = _build_options(model, example, plan, options, batches, log, cost)
    blocks = BlockLatency(runtime=runtime, threads=threads, runs=runs, use_cache=use_cache, log=log)
    wholes = blocks.fit(base, list(built.values()), example, {"original": model})
    calibrate_blocks(blocks, model, example, plan, options, built)
    return {"base": blocks.base_ms, "original": wholes["original"]}, blocks


def calibrate_blocks(
    blocks: BlockLatency,
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    options: Sequence[Option],
    built: dict[str, nn.Module],
) -> list[list[Option]]:
    """Calibrate a fitted block model on :func:`calibration_sets` and fill in each option's
    saving from it (``built``: each option applied alone, by key); returns the sets."""

    def savings() -> None:
        for o in options:
            o.saving_ms = blocks.base_ms - blocks.predict(built[o.key], example)[0]

    savings()  # the blocks' own, to find each group's fastest option
    sets = calibration_sets(options) if options else []
    if sets:
        plans = [
            apply_plan(model, with_entries(plan, [e for o in s for e in o.entries]), example)[0]
            for s in sets
        ]
        blocks.calibrate(plans, example)
        savings()
    return sets


def select_plan(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    budget_ms: float | None = None,
    *,
    budget_share: float | None = None,
    tucker_plans: Sequence[Plan] = (),
    batches: Sequence[torch.Tensor] = (),
    runtime: str = "ort",
    threads: int = 1,
    runs: int = 15,
    use_cache: bool = True,
    correction_rounds: int = 3,
    margin: float = 0.0,
    latency_model: str | None = None,
    cost: CostFn | None = None,
    out_of_reach: str = "error",
    log: Callable[[str], None] = lambda msg: None,
) -> Selection:
    """The plan that reaches ``budget_ms`` on ``runtime`` at the least estimated error; or
    ``budget_share`` of the original's latency, timed in the same run as the options.

    ``latency_model`` (default: :data:`DEFAULT_LATENCY_MODEL` of the runtime): with
    ``"blocks"`` the choice's latency is predicted from its blocks
    (options in one block timed together); with ``"networks"`` the choice is measured. By
    default, where the block model misses a plan it was calibrated on by more than
    :data:`MAX_CALIBRATION_MISS`, its savings still choose but each choice is measured whole
    beside the base (``extra["judged"]``: ``"measured"``, else ``"blocks"``). When that
    misses the budget (savings are not quite additive), the target is raised in proportion
    and the choice made again, up to ``correction_rounds`` times in all. With
    blocks, ``extra`` holds the selected plan's prediction block by block; measuring it whole
    is the caller's (the pipeline times it beside the original). ``margin``: aim that share
    under the budget (0.03: 3% under; the recipe's ``select.margin`` is 0.03 unless set), so
    that timing drift between runs and the blocks' prediction error do not put the result
    over it; a budget in reach whose margin is not is aimed at every option together.
    ``cost``: each option's cost from its entries (default: its error on ``batches`` before
    tuning). ``out_of_reach``: what a budget below every option together gets: ``"error"``
    (:class:`BudgetError`) or ``"fastest"`` (that plan, every group's fastest option, with
    ``extra["out_of_reach"]`` true: the closest the options come).

    Raises:
        BudgetError: the budget is below what any plan reaches (says the best reachable),
            unless ``out_of_reach="fastest"``.
    """
    if (budget_ms is None) == (budget_share is None):
        raise ValueError("give budget_ms or budget_share")
    if out_of_reach not in OUT_OF_REACH:
        raise ValueError(f"out_of_reach is one of {', '.join(OUT_OF_REACH)}")
    asked = latency_model
    latency_model = latency_model or DEFAULT_LATENCY_MODEL[runtime]
    if latency_model not in LATENCY_MODELS:
        raise ValueError(f"latency_model is one of {', '.join(LATENCY_MODELS)}")
    batches = list(batches) or [example]
    options = build_options(model, example, plan, tucker_plans)
    if cost is not None:  # each set of entries priced once (a cost may be a short tuning)
        cost = _once(cost)
    timing = dict(
        runtime=runtime, threads=threads, runs=runs, use_cache=use_cache, log=log, cost=cost
    )
    blocks = None
    # whether each choice is timed whole (the savings still come from the table)
    whole = latency_model == "networks"
    if latency_model == "blocks":
        table, blocks = measure_blocks(model, example, plan, options, batches, **timing)
        miss = blocks.calibration_miss
        if asked is None and miss > MAX_CALIBRATION_MISS:
            log(
                f"the block model misses a plan timed whole on {runtime} by {miss:.0%} (more "
                f"than {MAX_CALIBRATION_MISS:.0%}): its sums are not trusted here; the blocks' "
                "savings choose, and each choice is timed whole beside the base"
            )
            whole = True
    if latency_model == "networks":
        table = measure_options(model, example, plan, options, batches, **timing)

    def judge(picked: Sequence[Option]) -> float:
        """The choice's latency: predicted from its blocks, or measured whole."""
        if whole:
            return _measure_choice(model, example, plan, picked, runtime, threads, runs, base_ms)
        chosen, _ = apply_plan(
            model, with_entries(plan, [e for o in picked for e in o.entries]), example
        )
        return blocks.predict(chosen, example)[0]

    judged = "measured_ms" if whole else "blocks_ms"
    base_ms, original_ms = table["base"], table["original"]
    if budget_ms is None:
        budget_ms = budget_share * original_ms
        log(f"budget: {budget_share:g} of the original's {original_ms:.3f} ms = {budget_ms:.3f} ms")
    target_ms = budget_ms * (1.0 - margin)
    if margin:
        log(f"aiming {margin:.0%} under it: {target_ms:.3f} ms")
    groups = group_options(options)
    best = sum(
        max((o.saving_ms for o in g if o.saving_ms > 0), default=0.0) for g in groups.values()
    )
    fastest = fastest_options(groups)
    # What every option together reaches: by its blocks where there are blocks (options in
    # one block save more or less together than their savings alone add up to: ResNet-50 at
    # 224, 44 ms by its blocks where the savings summed to 54-60 ms; timed whole where the
    # block model is not trusted), else by the savings.
    reach_ms = judge(fastest) if blocks is not None and fastest else base_ms - best
    if target_ms < reach_ms <= budget_ms:  # the budget is in reach, its margin is not
        target_ms = reach_ms
        log(f"the margin is out of reach: aiming at every option together, {target_ms:.3f} ms")
    beyond = reach_ms > budget_ms
    if beyond and out_of_reach == "fastest":
        log(
            f"a budget of {budget_ms:g} ms on {runtime} is out of reach: every option together "
            f"gives about {reach_ms:.3f} ms; that plan is the closest the options come"
        )
        target_ms = reach_ms
    elif beyond:
        raise BudgetError(
            f"a budget of {budget_ms:g} ms on {runtime} is out of reach: the exact merges "
            f"give {base_ms:.3f} ms and all options together about {reach_ms:.3f} ms "
            '(--out-of-reach fastest, select.out_of_reach = "fastest", takes that plan)',
            fastest=with_entries(plan, [e for o in fastest for e in o.entries]),
            fastest_ms=reach_ms,
        )
    need = base_ms - target_ms
    if base_ms - reach_ms > best > 0:
        # together the options save more than their savings alone add up to: ask the
        # savings for as much less (the rounds below ask for more if that falls short)
        need *= best / (base_ms - reach_ms)
    if beyond:
        need = best  # every group's fastest option
    rounds, tried = [], []
    for _ in range(max(1, correction_rounds)):
        if need < best:
            try:
                picked, cost = choose(groups, need)
            except BudgetError:
                # The table's savings, rounded down to the grid, fall just short of a need
                # they reach together: only everything might do.
                need = best
        if need >= best:  # the fastest option of every group
            picked = fastest_options(groups)
            cost = sum(o.cost for o in picked)
        predicted = sum(o.saving_ms for o in picked)
        measured = judge(picked)
        rounds.append({"need_ms": need, "predicted_ms": base_ms - predicted, judged: measured})
        tried.append((picked, cost, predicted, measured))
        log(
            f"round {len(rounds)}: the options' savings give {base_ms - predicted:.3f} ms, "
            + ("measured" if whole else "its blocks")
            + f" {measured:.3f} ms"
        )
        achieved = base_ms - measured
        if measured <= target_ms or need >= best or achieved <= 0:
            break
        if any(t[0] == picked for t in tried[:-1]):
            break  # the same choice again: asking for more changes nothing
        # Savings did not add up as the table says: ask for proportionally more.
        need = min(best, need * predicted / achieved)
    # The first choice within budget is the cheapest (each round asks for more); else the fastest.
    within = [t for t in tried if t[3] <= target_ms]
    picked, cost, predicted, _ = within[0] if within else min(tried, key=lambda t: t[3])
    chosen_entries = [e for o in picked for e in o.entries]
    extra: dict = {"latency_model": latency_model, "judged": "measured" if whole else "blocks"}
    if beyond:
        extra["out_of_reach"] = True
    if blocks is not None:  # what the blocks predict, block by block (the caller measures)
        chosen, _ = apply_plan(model, with_entries(plan, chosen_entries), example)
        extra["blocks_ms"], extra["blocks"] = blocks.predict(chosen, example)
        extra["between_blocks_ms"], extra["ms_per_weight_mb"] = blocks.constant_ms, blocks.ms_per_mb
        extra["weights_mb"] = weights_mb(chosen)
        extra["calibration"] = blocks.calibration
    return Selection(
        plan=record_savings(with_entries(plan, chosen_entries), options),
        chosen=[o.key for o in picked],
        options=options,
        runtime=runtime,
        budget_ms=budget_ms,
        base_ms=base_ms,
        original_ms=original_ms,
        predicted_ms=base_ms - predicted,
        cost=cost,
        rounds=rounds,
        target_ms=target_ms,
        extra=extra,
    )


def record_savings(plan: Plan, options: Sequence[Option]) -> Plan:
    """``plan`` with each entry's measured saving, where an option enables that entry alone
    (a Tucker entry at the very ranks it has)."""

    def key(e: PlanEntry) -> tuple[str, str]:
        return e.id, json.dumps(e.geometry, sort_keys=True, default=str)

    alone = {key(o.entries[0]): o.saving_ms for o in options if len(o.entries) == 1}
    for e in plan.entries:
        if key(e) in alone:
            e.latency_saved_ms = round(alone[key(e)], 4)
    return plan


def _measure_choice(model, example, plan, picked, runtime, threads, runs, base_ms) -> float:
    """Latency of the chosen plan, as a share of the base measured beside it, times base_ms."""

    base, _ = apply_plan(model, with_entries(plan, []), example)
    chosen, _ = apply_plan(
        model, with_entries(plan, [e for o in picked for e in o.entries]), example
    )
    t = latencies(
        {"base": (base, example), "chosen": (chosen, example)},
        runtimes=[runtime],
        threads=threads,
        runs=runs,
        sessions=SESSIONS,
        beside="base",
    )[runtime]
    return base_ms * t["chosen"].median_ms / t["base"].median_ms
