"""Depth compression at 224x224 (speed only): networks slimmed with ``--drop-activations``
(the chains the plan enables by MACs; random weights, no tuning) against the original,
interleaved in one process, 1 thread, batch 1, medians, in PyTorch eager, ONNX Runtime and
ExecuTorch (XNNPACK). Writes benchmarks/results/depth_<size>.{json,md} with the command, commit,
date and machine.

    .venv/bin/python benchmarks/depth_speed.py [--models mobilenet_v2] [--runs 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from deeprebirth import get_model
from deeprebirth.files import atomic_write_text, write_json
from deeprebirth.profiling.bench import bench
from deeprebirth.profiling.machine import cpu_label, machine_info
from deeprebirth.profiling.plot import RUNTIME_LABELS
from deeprebirth.slimming import slim

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
RUNTIMES = ["torch", "ort", "executorch"]


def git_commit() -> str:
    run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks").stdout
    return run("rev-parse", "HEAD").stdout.strip() + ("+dirty" if dirty.strip() else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = {}
    for name in args.models.split(","):
        model = get_model(name).eval()
        print(f"--- {name}: planning with depth merges at {args.size}", flush=True)
        result = slim(model, name=name, input_size=args.size, depth=True)
        depth = [e for e in result.plan.entries if e.kind in ("drop_activation", "merge_convs")]
        r = bench(
            model,
            result.model,
            input_shape=(1, 3, args.size, args.size),
            runtimes=RUNTIMES,
            runs=args.runs,
            labels=(name, f"{name} slimmed"),
            log=print,
        )
        applied = set(result.report.applied)
        r["depth_entries"] = [
            {"id": e.id, "applied": e.id in applied, "macs_saved": e.macs_saved} for e in depth
        ]
        rows[name] = r
    info = machine_info()
    out = {
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "date": info.pop("date"),
        "machine": info,
        "size": args.size,
        "runs": args.runs,
        "models": rows,
    }
    out_path = RESULTS / f"depth_{args.size}"
    write_json(out_path.with_suffix(".json"), out)
    lines = [
        f"# Depth compression at {args.size}x{args.size} (speed only, random weights, not tuned)",
        "",
        f"`{out['command']}` at {out['commit'][:12]}, {out['date']}, {cpu_label(info)}, 1 thread, "
        f"batch 1, {args.runs} interleaved runs, medians.",
        "",
        "| model | chains merged | MMACs | "
        + " | ".join(f"{RUNTIME_LABELS[rt]} ms (original -> slimmed, speed-up)" for rt in RUNTIMES)
        + " |",
        "|---|---:|---:|" + "---|" * len(RUNTIMES),
    ]
    for name, r in rows.items():
        merged = sum(e["applied"] for e in r["depth_entries"])
        macs = f"{r['macs']['a'] / 1e6:.0f} -> {r['macs']['b'] / 1e6:.0f}"
        cells = [
            f"{t['a_ms']:.2f} -> {t['b_ms']:.2f} ({t['speedup']:.2f}x)"
            for t in (r["runtimes"][rt] for rt in RUNTIMES)
        ]
        lines.append(f"| {name} | {merged} | {macs} | " + " | ".join(cells) + " |")
    atomic_write_text(out_path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
