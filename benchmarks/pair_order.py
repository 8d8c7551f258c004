"""Does the order of turns in a timed pair bias it? (issue #32)

Every "beside" measurement (a slimmed network beside its original, a block beside the block
it replaces, an option set beside the base) times two models interleaved, turn by turn. Here
both are the same network: 8 copies of one network (random weights, 1 channel, 10 classes,
batch 1, 1 thread), each timed beside the original in 5 sessions of 15 runs
(``latencies(beside=...)``), three times over for each way of ordering the turns:

- ``seeded shuffle``: each round's order shuffled from one seed, as until 2026-12-07: with
  two models the second gets a turn straight after its own (rounds ab ab ba ba ba);
- ``no turn after its own``: the shuffle, but never one's turn straight after its own;
- ``leader alternates`` (the default since): that, and the reference leads every other
  session.

A copy is the same network, so every ratio copy / original should be 1; its median over
the copies is the bias of the measurement. Writes benchmarks/results/pair_order.{json,md}
with the command, commit, date and machine (a run replaces the rows of its networks,
sizes and runtimes).

    .venv/bin/python benchmarks/pair_order.py [--models mobilenet_v2] [--sizes 64]
        [--runtimes ort]

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import torch
from provenance import provenance, record_row, write_page

import deeprebirth.profiling.bench as bench
from deeprebirth import get_model
from deeprebirth.graph import example_input
from deeprebirth.profiling.timing import IN_A_ROW, Timing, measure_interleaved

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/pair_order"
COPIES = 8
REPEATS = 3


def _reference_first(fns: dict) -> dict:
    return dict(sorted(fns.items(), key=lambda kv: kv[0] != "ref"))


def seeded_shuffle(fns, runs, warmup, in_a_row=IN_A_ROW):
    """Pairs timed as until 2026-12-07: the reference inserted first, a turn may follow
    its own."""
    fns = _reference_first(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    timed, done = max(1, in_a_row - 1), 0
    while done < runs:
        rng.shuffle(order)
        n = min(timed, runs - done)
        for key in order:
            if in_a_row > 1:
                fns[key]()
            for _ in range(n):
                t0 = time.perf_counter()
                fns[key]()
                samples[key].append(time.perf_counter() - t0)
        done += n
    return {k: Timing.from_seconds(v) for k, v in samples.items()}


def reference_always_leads(fns, runs, warmup, in_a_row=IN_A_ROW):
    """No turn after its own, the reference (inserted first in the pair) leading each time."""
    return measure_interleaved(_reference_first(fns), runs, warmup, in_a_row)


ORDERS = {
    "seeded shuffle": seeded_shuffle,
    "no turn after its own": reference_always_leads,
    "leader alternates": measure_interleaved,
}


def run_one(name: str, size: int, runtime: str) -> dict:
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_chans=1).eval()
    x = example_input(1, 1, size)
    models = {
        "original": (model, x),
        **{f"copy{i}": (copy.deepcopy(model), x) for i in range(COPIES)},
    }
    out: dict[str, list[float]] = {k: [] for k in ORDERS}
    for _ in range(REPEATS):  # the orders take turns: drift is shared
        for label, order in ORDERS.items():
            bench.measure_interleaved = order
            try:
                t = bench.latencies(
                    models, runtimes=[runtime], runs=15, sessions=5, beside="original"
                )
            finally:
                bench.measure_interleaved = measure_interleaved
            ratios = [
                t[runtime][f"copy{i}"].median_ms / t[runtime]["original"].median_ms
                for i in range(COPIES)
            ]
            out[label].append(statistics.median(ratios) - 1)
            print(
                f"{name} {size} {runtime} {label}: copies {100 * out[label][-1]:+.1f}%", flush=True
            )
    return {"model": name, "size": size, "runtime": runtime, "copies": COPIES, "bias": out}


def write_md(data: dict) -> None:
    lines = [
        "# The order of turns in a timed pair",
        "",
        "<!-- written by benchmarks/pair_order.py from pair_order.json: do not edit -->",
        "",
        f"{COPIES} copies of a network, each timed beside the network itself (5 sessions of 15 "
        "runs, 1 thread, batch 1, random weights): the median over the copies of copy / "
        f"original - 1, measured {REPEATS} times for each order (the orders taking turns). "
        "0 is unbiased; negative: the copy, the one beside the reference, times fast.",
        "",
        "| network | input | runtime | " + " | ".join(ORDERS) + " | run |",
        "|---|---:|---|" + "---:|" * len(ORDERS) + "---|",
    ]
    for r in data["rows"]:
        cells = [", ".join(f"{100 * b:+.1f}%" for b in r["bias"][label]) for label in ORDERS]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['runtime']} | "
            + " | ".join(cells)
            + f" | {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2")
    p.add_argument("--sizes", default="64")
    p.add_argument("--runtimes", default="ort")
    args = p.parse_args()
    run = provenance()
    for runtime in args.runtimes.split(","):
        for size in map(int, args.sizes.split(",")):
            for name in args.models.split(","):
                row = run_one(name, size, runtime) | run
                data = record_row(RESULTS.with_suffix(".json"), row, ("model", "size", "runtime"))
                write_md(data)


if __name__ == "__main__":
    main()
