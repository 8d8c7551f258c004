"""Applying a plan: merges in order, each exact one behind a parity gate."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..graph.capture import capture
from ..parity import PARITY_TOLERANCE, relative_error
from ..plan.plan import Plan, PlanEntry, PlanError
from .base import Merge, finished_once, propagate_shapes
from .branch import BlockPool, BranchPool
from .depth import DropActivation, MergeConvs
from .exact import AvgPoolConv, DropLayer, FoldBatchNorm, FuseParallel, SumParallel
from .streamline import Streamline
from .tucker import Tucker

#: Merges in the order they are found and applied. Later phases look at the graph the
#: earlier ones left: batch-norm is folded before summed branches are merged and before a
#: streamline run is followed, branch heads lose their pools before a block is strided,
#: and the heads are fused last.
PHASES: tuple[tuple[Merge, ...], ...] = (
    (DropLayer(), FoldBatchNorm(), AvgPoolConv()),
    (SumParallel(),),
    (Streamline(), BranchPool()),
    (BlockPool(),),
    (FuseParallel(),),
)
#: Optional, after the merges (batch-norm folded, heads fused): depth compression, chains
#: of convs as one conv (``make_plan(drop_activations=True)``). Last, so that every other entry is
#: found on a graph without chains and applies whichever chains are chosen.
DEPTH_PHASE: tuple[Merge, ...] = (DropActivation(), MergeConvs())
#: Optional, after the merges: Tucker-2 decomposition of the remaining kxk convs.
COMPRESSION_PHASE: tuple[Merge, ...] = (Tucker(),)
MERGES: dict[str, Merge] = {
    m.kind: m for phase in (*PHASES, DEPTH_PHASE, COMPRESSION_PHASE) for m in phase
}


def phases(depth: bool = False, tucker: Merge | None = None) -> list[tuple[Merge, ...]]:
    """The phases a plan is found in: PHASES, then depth compression and a Tucker merge
    when asked for."""
    out = list(PHASES)
    if depth:
        out.append(DEPTH_PHASE)
    return [*out, (tucker,)] if tucker is not None else out


#: An exact merge may change the output by at most this, relative to the output's scale.
@dataclass
class SlimReport:
    applied: list[str] = field(default_factory=list)
    #: Exact merges whose parity gate failed: (entry id, why). They are not kept.
    reverted: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def apply_plan(
    model: nn.Module,
    plan: Plan,
    example: torch.Tensor,
    *,
    exact_only: bool = False,
    parity_gate: bool = True,
) -> tuple[fx.GraphModule, SlimReport]:
    """Apply the plan's enabled entries to a copy of ``model``; the original is untouched.

    Exact entries are checked against the model before them (relative error at most
    ``PARITY_TOLERANCE``); one that fails is reverted and reported, never kept. A run of
    consecutive exact entries is checked once, as a whole; only a run that fails is
    applied again one entry at a time, to find and revert the culprits.
    """
    gm = capture(copy.deepcopy(model)).eval()
    report = SlimReport()
    with torch.no_grad():
        reference = gm(example)
    todo = []
    for entry in plan.entries:
        if not entry.enabled or (exact_only and not entry.exact):
            report.skipped.append(entry.id)
            continue
        if entry.kind not in MERGES:
            raise PlanError(
                f"plan entry {entry.id}: unknown merge kind {entry.kind!r}; known: {', '.join(MERGES)}"
            )
        todo.append(entry)
    runs: list[list[PlanEntry]] = []
    for entry in todo:  # consecutive exact entries share one gate
        if runs and entry.exact and runs[-1][0].exact:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    for run in runs:
        if not (run[0].exact and parity_gate):
            _apply(gm, run, example, report)
            continue
        before = copy.deepcopy(gm)
        _apply(gm, run, example, report)
        if _parity_error(gm, before, example) <= PARITY_TOLERANCE:
            continue
        gm = before  # one of them broke parity: again one by one, reverting what fails
        for entry in run:  # (an entry skipped in the batch may apply once another is out)
            if entry.id in report.applied:
                report.applied.remove(entry.id)
            elif entry.id in report.skipped:
                report.skipped.remove(entry.id)
        for entry in run:
            step = copy.deepcopy(gm)
            if not _apply(gm, [entry], example, report):
                continue  # skipped
            err = _parity_error(gm, step, example)
            if err > PARITY_TOLERANCE:
                gm = step
                report.applied.remove(entry.id)
                report.reverted.append((entry.id, f"output changed by {err:.1e} of its scale"))
    with torch.no_grad():
        out = gm(example)
    if out.shape != reference.shape:
        raise PlanError(
            f"the slimmed model's output is {tuple(out.shape)}, the original's {tuple(reference.shape)}"
        )
    return gm, report


def apply_entries(
    gm: fx.GraphModule, entries: list[PlanEntry], example: torch.Tensor
) -> SlimReport:
    """Apply ``entries`` to ``gm`` in place, in order, with no parity gate (for a model whose
    plan was applied, and gated, before: e.g. its last entries after tuning)."""
    report = SlimReport()
    _apply(gm, entries, example, report)
    return report


def _apply(
    gm: fx.GraphModule, entries: list[PlanEntry], example: torch.Tensor, report: SlimReport
) -> list[PlanEntry]:
    """Apply ``entries`` in order; returns those applied (also listed in ``report``)."""
    with finished_once(gm):
        return _apply_each(gm, entries, example, report)


def _apply_each(gm, entries, example, report) -> list[PlanEntry]:
    applied, stale = [], True
    for entry in entries:
        merge = MERGES[entry.kind]
        if merge.needs_shapes and stale:
            propagate_shapes(gm, example)
            stale = False
        try:
            merge.apply(gm, entry)
        except PlanError:
            if not report.skipped:
                raise
            # It relied on an entry that was skipped (e.g. fusing a branch whose head pool
            # a learned merge would have removed): skip it too. Merges check before changing.
            report.skipped.append(entry.id)
            continue
        stale = stale or not merge.keeps_shapes
        report.applied.append(entry.id)
        applied.append(entry)
    return applied


def _parity_error(gm: fx.GraphModule, before: fx.GraphModule, example: torch.Tensor) -> float:
    with torch.no_grad():
        return relative_error(gm(example), before(example))
