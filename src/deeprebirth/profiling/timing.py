"""Timing helpers: warm-up, repeated runs, medians with spread, pinned threads."""

from __future__ import annotations

import contextlib
import functools
import random
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> Timing:
        ms = sorted(s * 1e3 for s in samples)
        q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
        return cls(statistics.median(ms), q[0], q[-1], len(ms))

    @classmethod
    def of_sessions(cls, timings: list[Timing]) -> Timing:
        """One model timed in several sessions: the median of each statistic over them."""
        if len(timings) == 1:
            return timings[0]
        return cls(
            statistics.median(t.median_ms for t in timings),
            statistics.median(t.p10_ms for t in timings),
            statistics.median(t.p90_ms for t in timings),
            sum(t.runs for t in timings),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def restores_threads(fn: Callable) -> Callable:
    """``fn`` pins threads to time; its caller gets its own intra-op thread count back (a
    profile before tuning had left the tuning on one thread)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def pin_threads(threads: int) -> None:
    """Pin PyTorch's intra- and inter-op thread pools."""
    torch.set_num_threads(threads)
    # The inter-op pool can only be sized once per process, before any parallel work.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)


def measure(fn: Callable[[], object], runs: int, warmup: int) -> Timing:
    """Time ``fn`` ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing.from_seconds(samples)


#: Runs of one function back to back in each turn of :func:`measure_interleaved`: the first
#: untimed (the functions before it evicted its weights from the caches), the rest timed.
IN_A_ROW = 4


def measure_interleaved(
    fns: dict[Hashable, Callable[[], object]], runs: int, warmup: int, in_a_row: int = IN_A_ROW
) -> dict[Hashable, Timing]:
    """Time several functions side by side, ``runs`` timed runs each: each round runs every
    one ``in_a_row`` times back to back, the first of them untimed, in an order shuffled
    afresh each round (seeded, so reruns match), never one's turn straight after its own.

    Interleaving spreads machine noise and drift evenly over the candidates, so their ratio
    is meaningful even on a shared machine; shuffling keeps any one from always running
    after the same neighbour, or first. Runs in a row time each as it runs deployed, again
    and again with its weights in the caches: run once per turn among others, a network
    waits on memory for weights the others evicted (MobileNetV2 at 64x64 in ONNX Runtime
    1.84x slower among 21 others: benchmarks/results/interleave_cache.md). A turn straight
    after its own runs fast: with two functions the seeded shuffles gave such turns to the
    second, and copies of MobileNetV2 timed beside it at 64x64 in ONNX Runtime came out
    1-7% faster than it (2-4% with no turn after its own; ``latencies(beside=...)`` also
    alternates which of a pair leads: benchmarks/results/pair_order.md).
    ``in_a_row=1``: one run per turn, all timed.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[Hashable, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    timed = max(1, in_a_row - 1)
    done = 0
    last = None
    while done < runs:
        rng.shuffle(order)
        if order[0] == last and len(order) > 1:  # no two turns back to back
            order[0], order[-1] = order[-1], order[0]
        last = order[-1]
        n = min(timed, runs - done)
        for key in order:
            fn = fns[key]
            if in_a_row > 1:
                fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
        done += n
    return {k: Timing.from_seconds(v) for k, v in samples.items()}
