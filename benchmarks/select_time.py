"""How long does a latency-budget selection take, start to end? (issue #32)

Runs what a user would: ``deeprebirth slim MODEL --input-size SIZE --drop-activations
--no-tune --no-report --latency-budget-share SHARE --runtime RUNTIME --threads 1`` (every
option kind: learned merges, depth chains, Tucker-2 ranks; random weights, the model's own
channels and classes, no data: the errors on random inputs) with an empty block-latency
cache, and records its wall time, its peak resident memory, and what the selection predicted
and measured (``selection.json``). Target (issue #32): ResNet-50 at 224 under 5 minutes on
2 cores. Writes benchmarks/results/select_time.{json,md} with the command, commit, date and
machine (a run replaces the row of its model, size and runtime).

    .venv/bin/python benchmarks/select_time.py [--models resnet50] [--sizes 224]
        [--runtimes ort] [--share 0.7]

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import provenance, record_row, write_page

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/select_time"
CLI = Path(sys.executable).with_name("deeprebirth")


def run_one(name: str, size: int, runtime: str, share: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [
            str(CLI), "slim", name, "--input-size", str(size), "--drop-activations",
            "--no-tune", "--no-report", "--latency-budget-share", str(share),
            "--runtime", runtime, "--threads", "1", "--out", str(out),
        ]  # fmt: skip
        env = os.environ | {"XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        print(" ".join(["deeprebirth", *cmd[1:-2]]), flush=True)
        t0 = time.time()
        child = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.time() - t0
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{' '.join(cmd)} failed")
        sel = json.loads((out / "selection.json").read_text())
    extra = sel.get("extra", {})
    return {
        "model": name,
        "size": size,
        "runtime": runtime,
        "share_asked": share,
        "seconds": round(seconds, 1),
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # KiB on Linux
        "options": len(sel["options"]),
        "rounds": len(sel.get("rounds", [])),
        "latency_model": extra.get("latency_model"),
        "predicted_ms": extra.get("blocks_ms", sel.get("predicted_ms")),
        "measured_ms": extra.get("measured_ms"),
        "original_ms": extra.get("original_ms"),
        "share_measured": extra.get("share"),
        "met": extra.get("share") is not None and extra["share"] <= share,
    }


def write_md(data: dict) -> None:
    lines = [
        "# A whole latency-budget selection, timed",
        "",
        "<!-- written by benchmarks/select_time.py from select_time.json: do not edit -->",
        "",
        "`deeprebirth slim MODEL --drop-activations --no-tune --no-report "
        "--latency-budget-share SHARE --threads 1` with an empty block-latency cache: "
        "every option kind (learned merges, depth chains, Tucker-2 ranks), random weights, "
        "no data. Target (issue #32): ResNet-50 at 224 under 5 minutes on 2 cores.",
        "",
        "| network | input | runtime | options | share asked | share measured | predicted ms "
        "| measured ms | latency model | rounds | minutes | peak GiB | run |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['runtime']} | {r['options']} "
            f"| {r['share_asked']:.2f} | {r['share_measured']:.3f} | {r['predicted_ms']:.2f} "
            f"| {r['measured_ms']:.2f} | {r.get('latency_model') or '(not recorded)'} "
            f"| {r['rounds']} | {r['seconds'] / 60:.1f} "
            f"| {r['peak_rss_gib']:.1f} | {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet50")
    p.add_argument("--sizes", default="224")
    p.add_argument("--runtimes", default="ort")
    p.add_argument("--share", type=float, default=0.7)
    args = p.parse_args()
    run = provenance()  # of the code that runs: files edited meanwhile do not count
    for runtime in args.runtimes.split(","):
        for size in map(int, args.sizes.split(",")):
            for name in args.models.split(","):
                row = run_one(name, size, runtime, args.share) | run
                print(f"{name} {size} {runtime}: {row['seconds'] / 60:.1f} min")
                data = record_row(RESULTS.with_suffix(".json"), row, ("model", "size", "runtime"))
                write_md(data)


if __name__ == "__main__":
    main()
