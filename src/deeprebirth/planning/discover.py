"""Finding every merge in a model: the plan."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..graph.capture import capture
from ..plan import Plan, PlanConfig, PlanError
from ..profiling.stats import count_macs
from ..transforms.base import propagate_shapes
from ..transforms.depth import choose_alternatives, end_in_activation
from ..transforms.runner import apply_entries, phases
from ..transforms.tucker import Tucker
from .exact_timing import leave_off_slower, time_entries


def make_plan(
    model: nn.Module,
    example: torch.Tensor,
    config: PlanConfig | None = None,
    *,
    name: str = "model",
    model_config: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    **options: Any,
) -> Plan:
    """Find the streamline, branch and exact merges in ``model`` at ``example``'s shape.

    ``config`` (a :class:`PlanConfig`, the recipe's ``[plan]``) says which merges to look
    for; ``options`` set its fields by name (``drop_activations=True``). Merges are found
    phase by phase (see ``transforms.PHASES``) on the graph the previous phases produced;
    each entry records the MACs it removes when applied in order. With ``tucker``, the kxk
    convs left are Tucker-2 decomposed (EVBMF ranks, or ``rank_ratio``), and the 1x1 convs
    too when ``pointwise_rank_ratio`` is given (at that share of channels). With
    ``drop_activations``, chains of convs become one conv (``transforms.depth``): each chain
    is costed alone, and the set that shares no layer and saves the most MACs is enabled;
    ``end_activation`` ends each chain that drops activations in one (``end_in_activation``).
    With ``runtime``, the exact merges that can cost time are timed there and left off
    where they make the model slower (``planning.exact_timing``); ``log`` hears of it.

    Example:
        >>> from deeprebirth import get_model
        >>> from deeprebirth.graph import example_input
        >>> plan = make_plan(get_model("bvlc_googlenet"), example_input(1, 3, 64))
        >>> sorted({e.kind for e in plan.entries})
        ['block_pool', 'branch_pool', 'drop_layer', 'fuse_parallel', 'streamline']
    """
    c = plan_config(config, options)
    compression = Tucker(c.rank_ratio, c.pointwise_rank_ratio) if c.tucker else None
    gm = capture(copy.deepcopy(model)).eval()
    entries = []
    try:
        macs = count_macs(gm, example)
    except RuntimeError as e:  # e.g. an input smaller than the network's kernels
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shape = "x".join(map(str, example.shape))
        raise PlanError(f"{name} does not run on a {shape} input: {cause}") from e
    for phase in phases(depth=c.drop_activations, tucker=compression):
        propagate_shapes(gm, example)
        found = [entry for merge in phase for entry in merge.find(gm)]
        merge_of = {m.kind: m for m in phase}
        alternatives = any(m.alternatives for m in phase)
        if alternatives:  # overlapping options, each costed alone by find: choose a set
            position = {}
            for i, n in enumerate(gm.graph.nodes):
                position[n.name] = position[str(n.target)] = i
            choose_alternatives(found, position)
        if c.end_activation:
            end_in_activation(found)
        timed = [e for e in found if c.runtime and e.enabled and merge_of[e.kind].can_cost_time]
        before = copy.deepcopy(gm) if timed else None
        macs = _apply_found(gm, found, merge_of, example, macs, alternatives)
        if timed and _leave_off_slower(before, gm, found, timed, example, c.runtime, log):
            gm = before  # again, without the entries left off
            propagate_shapes(gm, example)
            macs = count_macs(gm, example)
            macs = _apply_found(gm, found, merge_of, example, macs, alternatives)
        entries += found
    return Plan(
        model=name,
        input_shape=list(example.shape),
        entries=entries,
        model_config=dict(model_config or {}),
    )


def _apply_found(gm, found, merge_of, example, macs: int, alternatives: bool) -> int:
    """Apply a phase's enabled entries to ``gm`` in order, recording the MACs each saves
    (``macs``: the graph's before); returns the MACs after."""
    stale = False  # whether an applied entry changed shapes since
    for entry in found:
        if not entry.enabled:
            continue
        merge = merge_of[entry.kind]
        if merge.needs_shapes and stale:
            propagate_shapes(gm, example)  # an earlier entry changed shapes
            stale = False
        merge.apply(gm, entry)
        stale = stale or not merge.keeps_shapes
        if merge.keeps_macs:
            entry.macs_saved = 0
        elif not alternatives and not merge.counts_macs:
            after = count_macs(gm, example)
            entry.macs_saved, macs = macs - after, after
    return count_macs(gm, example) if alternatives else macs


def _leave_off_slower(before, applied, found, timed, example, runtime: str, log) -> bool:
    """Time each of ``timed`` on ``runtime`` (``applied`` against ``applied`` without it,
    both from ``before``) and disable those that make the model slower; True if any."""
    without = {}
    for entry in timed:
        gm = copy.deepcopy(before)
        apply_entries(gm, [e for e in found if e.enabled and e is not entry], example)
        without[entry.id] = gm
    log(f"timing {len(timed)} exact merges that can cost time on {runtime}")
    slower = leave_off_slower(
        timed, time_entries(applied, without, example, runtime, log=log), runtime
    )
    for entry in slower:
        log(f"{entry.id}: {entry.note}")
    return bool(slower)


def plan_config(config: PlanConfig | None, options: dict[str, Any]) -> PlanConfig:
    """``config`` (default: the defaults) with ``options`` set by field name; an unknown
    name is a TypeError naming it."""
    try:
        return dataclasses.replace(config or PlanConfig(), **options)
    except TypeError as e:
        known = ", ".join(f.name for f in dataclasses.fields(PlanConfig))
        raise TypeError(f"{e}; the plan options are {known}") from None
