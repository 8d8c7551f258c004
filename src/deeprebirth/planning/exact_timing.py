"""Exact merges that cost time, timed in the runtime a plan is for.

An exact merge keeps the function, not always the speed: an average pool as a kxk conv,
summed branches as one kernel padded to the largest, parallel convs as one wider conv can
each run slower than what they replace in a given runtime (a dense 3x3 in place of a 1x1
and a pool). When a plan names its runtime (``plan.runtime``), each entry of such a merge
(:attr:`~deeprebirth.transforms.base.Merge.can_cost_time`) is timed there: the graph with
the phase's entries applied against the same graph without that one entry, block by block
(:class:`~deeprebirth.planning.blocks.BlockLatency`: only the blocks an entry changes
differ, so a small difference is not lost in a whole network's drift). An entry whose
blocks run more than :data:`SLOWER_SHARE` slower with it is left off, the measurement in
its note; ``plan.enable`` keeps it anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import fx

from ..plan import PlanEntry
from ..profiling.bench import latencies
from .blocks import SESSIONS, BlockLatency

#: An entry is left off when the blocks it changes run this share slower with it than
#: without (above the few-percent noise of timing a block, median of 3 sessions), in two
#: timings.
SLOWER_SHARE = 0.05
#: How the note of an entry left off starts.
LEFT_OFF = "left off:"
#: Threads the entries are timed with (a phone-class core count of one, as the selection's
#: default).
THREADS = 1
#: Timed runs per block form, in each of the sessions.
RUNS = 15


def time_entries(
    applied: fx.GraphModule,
    without: dict[str, fx.GraphModule],
    example: torch.Tensor,
    runtime: str,
    *,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict]:
    """For each entry id in ``without`` (``applied`` less that entry): the milliseconds
    the blocks the entry changes take with it (``with_ms``) and without it
    (``without_ms``). An entry found slower is timed again, in new sessions, and counts
    as slower only if it is both times (the second timing is the one kept)."""
    timings = _time(applied, without, example, runtime, log, use_cache=True)
    again = {k: without[k] for k, t in timings.items() if _slower(t)}
    if again:
        log(f"timing {len(again)} that ran slower again")
        timings |= _time(applied, again, example, runtime, log, use_cache=False)
    return timings


def _slower(t: dict) -> bool:
    return t["with_ms"] > t["without_ms"] * (1 + SLOWER_SHARE)


def _time(applied, without, example, runtime, log, use_cache: bool) -> dict[str, dict]:
    latency = BlockLatency(
        runtime=runtime, threads=THREADS, runs=RUNS, use_cache=use_cache, log=log
    )
    try:
        latency.fit(applied, list(without.values()), example, changed_only=True)
    except ValueError:  # no blocks (several outputs): whole networks, side by side
        models = {k: (m, example) for k, m in {"<applied>": applied, **without}.items()}
        t = latencies(models, runtimes=[runtime], threads=THREADS, runs=RUNS, sessions=SESSIONS)
        ms = {k: v.median_ms for k, v in t[runtime].items()}
        return {k: {"with_ms": ms["<applied>"], "without_ms": ms[k]} for k in without}
    applied_blocks = Counter(b.key for b in latency.split(applied, example))
    out = {}
    for entry_id, gm in without.items():
        blocks = Counter(b.key for b in latency.split(gm, example))
        # the blocks that differ (a block may occur more than once: multisets)
        out[entry_id] = {
            "with_ms": _ms(latency, applied_blocks - blocks),
            "without_ms": _ms(latency, blocks - applied_blocks),
        }
    return out


def _ms(latency: BlockLatency, blocks: Counter) -> float:
    return sum(latency.table[k] * n for k, n in blocks.items())


def leave_off_slower(
    entries: Sequence[PlanEntry],
    timings: dict[str, dict],
    runtime: str,
) -> list[PlanEntry]:
    """Record each timed entry's saving (``latency_saved_ms``); disable those that make
    their blocks more than :data:`SLOWER_SHARE` slower, saying why. Returns them."""
    slower = []
    for entry in entries:
        t = timings.get(entry.id)
        if t is None:
            continue
        entry.latency_saved_ms = t["without_ms"] - t["with_ms"]
        if _slower(t):
            entry.enabled = False
            why = (
                f"{LEFT_OFF} slower on {runtime} ({THREADS} thread): its blocks took "
                f"{t['with_ms']:.3f} ms with it, {t['without_ms']:.3f} ms without "
                f"({t['with_ms'] / t['without_ms'] - 1:+.0%}), twice; plan.enable keeps it"
            )
            entry.note = f"{entry.note}; {why}" if entry.note else why
            slower.append(entry)
    return slower


def left_off_why(entry: PlanEntry) -> str | None:
    """Why the plan left ``entry`` off as slower (its note from "left off:"), or None."""
    if entry.enabled or LEFT_OFF not in entry.note:
        return None
    return entry.note[entry.note.index(LEFT_OFF) :]
