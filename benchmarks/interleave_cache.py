"""How much slower does a model time when interleaved with many others? (issue #32)

The selection's latency table timed every option's network interleaved with all the others
(and the speed tables time a dozen models side by side). Each model then runs after the
others have pushed its weights out of the caches. This times one network (random weights,
1 channel, 10 classes, batch 1, 1 thread, ONNX Runtime) interleaved with 0, 1, 5 and 21
other instances of itself (distinct weights: one model's worth of memory each), 15 runs
after 5 of warm-up, and records its median each time; ``--in-a-row 1`` runs each model once
per turn (as every timing here did until 2026-12-06), 4 (the default since) four times back
to back, the first untimed. Writes
benchmarks/results/interleave_cache.{json,md} with the command, commit, date and machine (a
run replaces the rows of its networks and sizes).

    .venv/bin/python benchmarks/interleave_cache.py [--models mobilenet_v2,bvlc_googlenet]
        [--sizes 64] [--in-a-row 1,4]

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from provenance import provenance, record_row, write_page

from deeprebirth.files import write_json
from deeprebirth.graph import example_input
from deeprebirth.profiling.bench import latencies
from deeprebirth.zoo import get_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/interleave_cache"
OTHERS = (0, 1, 5, 21)


def run_one(name: str, size: int, in_a_row: int) -> dict:
    torch.manual_seed(0)
    x = example_input(1, 1, size)
    models = [get_model(name, num_classes=10, in_chans=1).eval() for _ in range(max(OTHERS) + 1)]
    params = sum(p.numel() for p in models[0].parameters())
    ms = {}
    for n in OTHERS:
        timed = {f"m{i}": (m, x) for i, m in enumerate(models[: n + 1])}
        t = latencies(timed, runtimes=["ort"], threads=1, runs=15, in_a_row=in_a_row)["ort"]
        ms[str(n)] = t["m0"].median_ms
        print(f"{name} {size} ({in_a_row} in a row): beside {n} others {ms[str(n)]:.3f} ms")
    return {
        "model": name,
        "size": size,
        "in_a_row": in_a_row,
        "weights_mb": params * 4 / 2**20,
        "ms": ms,
    }


def write_md(data: dict) -> None:
    lines = [
        "# One network timed among others: the caches",
        "",
        "<!-- written by benchmarks/interleave_cache.py from interleave_cache.json: "
        "do not edit -->",
        "",
        "Median latency (ms) of one network in ONNX Runtime (random weights, 1 channel, batch "
        "1, 1 thread, 15 runs) when interleaved with that many other instances of itself, "
        "each with its own weights. `in a row`: runs of each model per turn (more than 1: "
        "back to back, the first untimed).",
        "",
        "| network | input | in a row | weights MB | "
        + " | ".join(f"beside {n}" for n in OTHERS)
        + " | slowdown at 21 | run |",
        "|---|---:|---:|---:|" + "---:|" * len(OTHERS) + "---:|---|",
    ]
    for r in data["rows"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {r['size']} | {r.get('in_a_row', 1)} | {r['weights_mb']:.1f} | "
            + " | ".join(f"{ms[str(n)]:.3f}" for n in OTHERS)
            + f" | {ms[str(OTHERS[-1])] / ms['0']:.2f}x | {r['date'][:10]}, "
            f"{r['machine']['cpu']} |"
        )
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2,bvlc_googlenet")
    p.add_argument("--sizes", default="64")
    p.add_argument("--in-a-row", default="1,4", help="runs per turn to compare")
    args = p.parse_args()
    run = provenance()  # of the code that runs: files edited meanwhile do not count
    path = RESULTS.with_suffix(".json")
    if path.is_file():  # rows from before --in-a-row ran each model once per turn
        data = json.loads(path.read_text())
        write_json(path, {**data, "rows": [{"in_a_row": 1} | r for r in data["rows"]]})
    for size in map(int, args.sizes.split(",")):
        for name in args.models.split(","):
            for in_a_row in map(int, args.in_a_row.split(",")):
                row = run_one(name, size, in_a_row) | run
                data = record_row(RESULTS.with_suffix(".json"), row, ("model", "size", "in_a_row"))
                write_md(data)


if __name__ == "__main__":
    main()
