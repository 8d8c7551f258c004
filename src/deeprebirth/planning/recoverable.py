"""The learned merges a tuning budget can recover.

A learned merge is paid for twice: in tuning time, to bring the accuracy back, and in
accuracy, where that time falls short. When ``tune.budget_minutes`` buys only a share of
the tuning the plan asks for (its stages and fine-tune passes, timed on this machine), every
learned merge gets that share of what it needs, and the slimmed model comes back far from
its teacher (BVLC GoogLeNet at 64x64: all 13 learned merges in 8 minutes, -2.27 points; in
3 minutes, -40). Instead the budget keeps as many learned merges as that share of them
(rounded up), the ones that pay most: among the merges that save at least an average
merge's share of the latency (a short budget is not spent on one that saves less), the
most latency saved on the target runtime per unit of error, both measured (the
selection's table, :mod:`deeprebirth.planning.select`: each merge applied alone to the
exact-only model, its blocks timed, its error at the output before tuning). A merge that saves nothing on that runtime is never kept for a budget.
Exact merges cost no accuracy and stay; Tucker-2 and depth-chain entries are left as the
plan has them (a latency budget chooses among those: ``select``). Each merge left off says
why in its note.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..plan import Plan, PlanEntry
from .exact_timing import LEFT_OFF
from .select import Option, _is_alternative, build_options, measure_blocks


def trimmable(entry: PlanEntry) -> bool:
    """A learned merge a budget may leave off: streamline, branch and block merges (not
    Tucker-2, not depth chains, which have their own options in a selection)."""
    return (
        entry.enabled and not entry.exact and entry.kind != "tucker" and not _is_alternative(entry)
    )


def keep_recoverable(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    share: float,
    batches: Sequence[torch.Tensor],
    *,
    runtime: str = "ort",
    threads: int = 1,
    runs: int = 15,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[Plan, dict]:
    """``plan`` with at most as many learned merges as ``share`` of them (rounded up),
    chosen by :func:`pick`; and a record of the choice (``kept``, ``left_off``, every
    option's saving and error).

    ``share`` is what the budget buys of the tuning the plan needs (below 1). The options
    are :func:`~deeprebirth.planning.select.build_options`' (a merge another needs comes
    with it), measured by :func:`~deeprebirth.planning.select.measure_blocks` on
    ``runtime`` (``threads``, ``runs``) and on the error at the output for ``batches``.
    """
    learned = [e for e in plan.entries if trimmable(e)]
    keep = min(len(learned), math.ceil(share * len(learned)))
    record = {"share": round(share, 3), "learned": len(learned), "keep": keep, "runtime": runtime}
    if keep >= len(learned):
        return plan, record | {"kept": [e.id for e in learned], "left_off": []}
    # The options among the merges a budget may leave off, on the plan without the others.
    ids = {e.id for e in learned}
    base = Plan(
        plan.model,
        plan.input_shape,
        [copy.copy(e) for e in plan.entries if e.exact and not _is_alternative(e) or e.id in ids],
        plan.model_config,
    )
    options = build_options(model, example, base)
    log(f"timing {len(options)} options of {len(learned)} learned merges on {runtime}")
    try:
        measure_blocks(
            model,
            example,
            base,
            options,
            batches,
            runtime=runtime,
            threads=threads,
            runs=runs,
            use_cache=use_cache,
            log=log,
        )
    except ValueError as e:  # no blocks to time (a network with several outputs)
        log(f"the learned merges cannot be timed block by block ({e}): all are kept")
        return plan, record | {"kept": [e.id for e in learned], "left_off": [], "why": str(e)}
    picked = pick(options, keep)
    kept = {e.id for o in picked for e in o.entries}
    left_off = []
    plan = copy.deepcopy(plan)
    alone = {o.entries[0].id: o for o in options if len(o.entries) == 1}
    for entry in plan.entries:
        if entry.id not in ids or entry.id in kept:
            continue
        entry.enabled = False
        o = alone.get(entry.id)
        measured = (
            f"alone it saves {o.saving_ms:.3f} ms on {runtime} at an error of {o.cost:.2g}"
            if o
            else "it needs another merge"
        )
        why = (
            f"{LEFT_OFF} the tuning budget keeps {len(kept)} of {len(learned)} learned merges "
            f"(it buys {share:.0%} of their tuning); {measured}; plan.enable keeps it"
        )
        entry.note = f"{entry.note}; {why}" if entry.note else why
        left_off.append(entry.id)
    record |= {
        "kept": sorted(kept),
        "left_off": left_off,
        "options": [o.to_dict() | {"chosen": o in picked} for o in options],
    }
    return plan, record


def pick(options: Sequence[Option], keep: int) -> list[Option]:
    """At most one option per group, ``keep`` merges in all: among the options that save
    at least an average learned merge's share of what all save (a short budget's tuning
    is not spent on a merge that saves less), the most ms saved per unit of error first."""
    groups: dict[str, list[Option]] = {}
    for o in options:
        groups.setdefault(o.group, []).append(o)
    total = sum(
        max((o.saving_ms for o in g if o.saving_ms > 0), default=0.0) for g in groups.values()
    )
    merges = len({e.id for o in options for e in o.entries})
    floor = total / max(merges, 1)

    def value(o: Option) -> float:
        return o.saving_ms / max(o.cost, 1e-9)

    worth = [o for o in options if o.saving_ms > 0 and o.saving_ms >= floor * len(o.entries)]
    picked, count, taken = [], 0, set()
    for o in sorted(worth, key=value, reverse=True):
        if o.group in taken or count + len(o.entries) > keep:
            continue
        picked.append(o)
        taken.add(o.group)
        count += len(o.entries)
    return picked
