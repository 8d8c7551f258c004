"""The plan options: which merges to look for and how (a recipe's ``[plan]`` table, the
``slim``/``plan`` flags and the keyword arguments of ``make_plan`` and ``slim``, under the
same names)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class PlanConfig:
    file: str | None = option(None, "a plan from `deeprebirth plan -o` (default: make one)")
    exact_only: bool = option(False, "apply only the merges that keep the function")
    runtime: str | None = option(
        None,
        "the runtime the plan is for (ort, ort-int8, executorch or torch): the exact merges "
        "that can cost time there (average pools as convs, summed or parallel branches as "
        "one conv) are timed in it, 1 thread, block by block, and left off when they make the "
        "model slower, the reason in the plan (plan.enable keeps one anyway; a plan.file is "
        "taken as it is); none: kept untimed (a latency budget's selection times them on "
        "select.runtime)",
    )
    drop_activations: bool = option(
        False,
        "depth compression: chains of convs, activations dropped, become one conv where that "
        "saves MACs",
    )
    end_activation: bool = option(
        True,
        "depth compression: a merged chain that no activation follows ends in a copy of the "
        "first one it dropped, so consecutive merged chains stay non-linear (MobileNetV2's "
        "blocks end linear; false: 2.34 points lost where true lost 0.62, docs/results.md)",
    )
    enable: list[str] = option(
        [],
        "plan entries to apply, by id (`deeprebirth plan` lists them), though the plan leaves "
        "them off (a depth chain that overlaps the one it chose: disable that one too)",
    )
    disable: list[str] = option([], "plan entries to leave out, by id")
    tucker: bool = option(False, "also Tucker-2 decompose the remaining kxk convs")
    rank_ratio: float | None = option(
        None, "Tucker ranks as this share of the channels (none: EVBMF)"
    )
    pointwise_rank_ratio: float | None = option(
        None, "also factor the 1x1 convs, at this share of their channels (none: leave them)"
    )
