"""Which depth chains does a selection take when options are priced after a short tuning?
(issue #32 item 2)

Runs ``deeprebirth slim mobilenet_v2`` on the committed Fashion-MNIST MobileNetV2 (64x64)
with ``--drop-activations --latency-budget-share SHARE --runtime ort --threads 1 --no-tune
--no-eval --no-report --data fashion-mnist``, once per ``--cost-batches`` value (0: each
option priced by its error before tuning, the default; N: after N batches per stage and N of
fine-tune), each with an empty block-latency cache, and records what each chose, its
measured share of the original's latency (timed beside it in the same run) and its minutes.
Beside each choice: what its chains cost alone when tuned at length, summed, as
``benchmarks/cost_proxy.py`` measured them (``cost_proxy.json``: each chain alone, 200 batches
per stage and 200 of fine-tune; val top-1 lost against the teacher), an estimate, not a
tuned result. Train tunes, val judges; the test split is not read. Writes
benchmarks/results/select_cost.{json,md} with the command, commit, date and machine (a run
replaces the row of its share and cost batches).

    .venv/bin/python benchmarks/select_cost.py [--cost-batches 0,50] [--share 0.75]

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
RESULTS = ROOT / "benchmarks/results/select_cost"
PROXY = ROOT / "benchmarks/results/cost_proxy.json"
CHECKPOINT = "benchmarks/weights/fashion_mnist_64/mobilenet_v2.safetensors"
CLI = Path(sys.executable).with_name("deeprebirth")


def lone_costs() -> tuple[dict[str, float], float]:
    """Each MobileNetV2 chain's val top-1 after it alone was tuned at length, and the
    teacher's (``cost_proxy.json``)."""
    row = next(r for r in json.loads(PROXY.read_text())["rows"] if r["model"] == "mobilenet_v2")
    return {o["option"]: o["tuned_top1"] for o in row["rows"]}, row["teacher_val_top1"]


def run_one(share: float, cost_batches: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [
            str(CLI), "slim", "mobilenet_v2", "--checkpoint", CHECKPOINT, "--num-classes", "10",
            "--in-chans", "1", "--input-size", "64", "--data", "fashion-mnist",
            "--drop-activations", "--latency-budget-share", str(share), "--runtime", "ort",
            "--threads", "1", "--cost-batches", str(cost_batches), "--no-tune", "--no-eval",
            "--no-report", "--out", str(out),
        ]  # fmt: skip
        env = os.environ | {"XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        print(" ".join(["deeprebirth", *cmd[1:-2]]), flush=True)
        t0 = time.time()
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
            raise SystemExit(f"{' '.join(cmd)} failed")
        seconds = time.time() - t0
        sel = json.loads((out / "selection.json").read_text())
    extra = sel["extra"]
    top1, teacher = lone_costs()
    chosen = sorted(sel["chosen"], key=lambda k: [o["key"] for o in sel["options"]].index(k))
    savings = [o["saving_ms"] for o in sel["options"]]
    return {
        "share_asked": share,
        "original_ms": extra["original_ms"],
        "saving_alone_ms": [min(savings), max(savings)],
        "savings_sum_ms": sum(s for s in savings if s > 0),
        "every_option_saves_ms": extra["original_ms"] - extra["fixed_plan_ms"],
        "cost_batches": cost_batches,
        "chosen": chosen,
        "lone_top1_lost": sum(teacher - top1[k] for k in chosen if k in top1),
        "share_measured": extra["share"],
        "latency_model": extra["latency_model"],
        "rounds": len(sel["rounds"]),
        "minutes": round(seconds / 60, 1),
    }


def short(key: str) -> str:
    """``drop_activation:features.3.conv.0.0..features.3.conv.2`` -> ``3``."""
    return key.split(":")[1].split(".")[1]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def write_md(data: dict) -> None:
    lines = [
        "# MobileNetV2's depth chains chosen by each option cost",
        "",
        "<!-- written by benchmarks/select_cost.py from select_cost.json: do not edit -->",
        "",
        "The committed Fashion-MNIST MobileNetV2 at 64x64, its depth chains as options, a "
        "budget as a share of its ONNX Runtime latency; each option priced by its output error "
        "before tuning (cost batches 0) or after N batches per stage and N of fine-tune "
        "(`--cost-batches N`). Chains by the `features` block they start in. `lone loss`: the "
        "chosen chains' val top-1 points lost when each alone was tuned at length "
        "(benchmarks/results/cost_proxy.md), summed: an estimate of what the choice costs, "
        "not a tuned result.",
        "",
        "Savings: what each option alone saves in the selection's table (least and most, in "
        "ms, beside the base: timed exact merges only against it with that option), their sum "
        "over the options that save, and what every option together saves, measured beside "
        "the original in the final check (original less the plan with every option).",
        "",
        "| share asked | cost batches | chains chosen | lone loss (points) | share measured "
        "| original ms | each saves alone | sum of those | all together save "
        "| latency model | rounds | minutes | run |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in data["rows"]:
        lo_hi = r.get("saving_alone_ms")
        each = f"{lo_hi[0]:.3f} to {lo_hi[1]:.3f}" if lo_hi else "—"
        lines.append(
            f"| {r['share_asked']:.2f} | {r['cost_batches']} "
            f"| {', '.join(short(k) for k in r['chosen'])} | {100 * r['lone_top1_lost']:.2f} "
            f"| {r['share_measured']:.3f} | {_ms(r.get('original_ms'))} | {each} "
            f"| {_ms(r.get('savings_sum_ms'))} | {_ms(r.get('every_option_saves_ms'))} "
            f"| {r['latency_model']} | {r['rounds']} "
            f"| {r['minutes']:.1f} | {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cost-batches", default="0,50", help="comma-separated; 0: before tuning")
    p.add_argument("--share", type=float, default=0.75)
    args = p.parse_args()
    run = provenance()  # of the code that runs: files edited meanwhile do not count
    for n in map(int, args.cost_batches.split(",")):
        row = run_one(args.share, n) | run
        print(f"cost batches {n}: {', '.join(row['chosen'])}: share {row['share_measured']:.3f}")
        write_md(record_row(RESULTS.with_suffix(".json"), row, ("share_asked", "cost_batches")))


if __name__ == "__main__":
    main()
