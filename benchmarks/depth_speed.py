"""Depth compression at 224x224 (speed only): networks slimmed with ``--drop-activations``
(the chains the plan enables by MACs; random weights, no tuning) against the original,
interleaved in one process, 1 thread, batch 1, medians, in PyTorch eager, ONNX Runtime and
ExecuTorch (XNNPACK). Writes benchmarks/results/depth_<size>.{json,md} with the command, commit,
date and machine.

    .venv/bin/python benchmarks/depth_speed.py [--models mobilenet_v2] [--runs 30]

With ``--budget-share S`` the chains are the ones the latency-budget selection picks to reach
S of the original's ORT latency (1 thread) instead of all that save MACs; a model whose
chains cannot reach it is recorded as out of reach, with the selector's reason. Writes
benchmarks/results/depth_<size>_share.{json,md} then. ``--tucker`` adds the Tucker-2 ranks
of every kxk conv to the options (as a recipe's selection has them) and writes
depth_<size>_share_tucker.{json,md}.

``--baseline merges`` compares against the network with the other merges only (the
DeepRebirth merges, no depth chains) instead of the original: what the depth chains add on
top (BVLC GoogLeNet). Writes depth_<size>_vs_merges.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from provenance import provenance

from deeprebirth import get_model
from deeprebirth.files import atomic_write_text, write_json
from deeprebirth.graph import example_input
from deeprebirth.machine import cpu_label
from deeprebirth.planning import make_plan
from deeprebirth.planning.select import BudgetError, select_plan, tucker_plans
from deeprebirth.profiling.bench import bench
from deeprebirth.profiling.plot import RUNTIME_LABELS
from deeprebirth.slimming import slim

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
RUNTIMES = ["torch", "ort", "executorch"]


def select(model, name: str, args):
    """The chains the latency-budget selection picks for ``args.budget_share`` (ORT, 1
    thread), applied; and the selection."""
    example = example_input(1, 3, args.size)
    plan = make_plan(model, example, name=name, drop_activations=True)
    selection = select_plan(
        model,
        example,
        plan,
        budget_share=args.budget_share,
        tucker_plans=tucker_plans(model, example, name=name) if args.tucker else (),
        runs=args.selection_runs,
        log=print,
    )
    return slim(model, selection.plan), selection


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--budget-share", type=float, help="choose chains for this share of ORT ms")
    p.add_argument("--selection-runs", type=int, default=50)
    p.add_argument("--tucker", action="store_true", help="Tucker ranks as options too")
    p.add_argument(
        "--baseline",
        choices=("original", "merges"),
        default="original",
        help="compare against the original, or the network with every merge but the chains",
    )
    args = p.parse_args()
    if args.tucker and args.budget_share is None:
        p.error("--tucker chooses among options: give --budget-share too")
    if args.baseline == "merges" and args.budget_share is not None:
        p.error("--baseline merges compares every chain that saves MACs: no --budget-share")
    torch.manual_seed(0)
    rows, skipped = {}, {}
    for name in args.models.split(","):
        model = get_model(name).eval()
        print(f"--- {name}: planning with depth merges at {args.size}", flush=True)
        if args.budget_share is None:
            result = slim(model, name=name, input_size=args.size, drop_activations=True)
        else:
            try:
                result, selection = select(model, name, args)
            except BudgetError as e:
                print(f"{name}: {e}", flush=True)
                skipped[name] = str(e)
                continue
        depth = [e for e in result.plan.entries if e.kind in ("drop_activation", "merge_convs")]
        baseline = model
        if args.baseline == "merges":
            baseline = slim(model, name=name, input_size=args.size).model
        r = bench(
            baseline,
            result.model,
            input_shape=(1, 3, args.size, args.size),
            runtimes=RUNTIMES,
            runs=args.runs,
            labels=(name if args.baseline == "original" else f"{name} merged", f"{name} slimmed"),
            log=print,
        )
        applied = set(result.report.applied)
        r["depth_entries"] = [
            {"id": e.id, "applied": e.id in applied, "macs_saved": e.macs_saved} for e in depth
        ]
        r["tucker_entries"] = [
            {"id": e.id, "ranks": e.geometry.get("ranks"), "macs_saved": e.macs_saved}
            for e in result.plan.entries
            if e.kind == "tucker" and e.id in applied
        ]
        if args.budget_share is not None:
            r["selection"] = {
                k: selection.to_dict()[k]
                for k in ("chosen", "budget_ms", "original_ms", "base_ms", "predicted_ms", "rounds")
            }
        rows[name] = r
    out = {
        **provenance(),
        "size": args.size,
        "runs": args.runs,
        "budget_share": args.budget_share,
        "tucker_options": args.tucker,
        "baseline": args.baseline,
        "models": rows,
        "out_of_reach": skipped,
    }
    suffix = "" if args.budget_share is None else "_share" + ("_tucker" if args.tucker else "")
    suffix += "_vs_merges" if args.baseline == "merges" else ""
    out_path = RESULTS / f"depth_{args.size}{suffix}"
    write_json(out_path.with_suffix(".json"), out)
    how = (
        "every chain that saves MACs"
        + (
            ", against the network with every other merge and no chain"
            if args.baseline == "merges"
            else ""
        )
        if args.budget_share is None
        else f"the {'chains and Tucker ranks' if args.tucker else 'chains'} selected for "
        f"{args.budget_share:g} of the original's ORT latency"
    )
    before = "original" if args.baseline == "original" else "merges only"
    lines = [
        f"# Depth compression at {args.size}x{args.size} (speed only, random weights, not tuned)",
        "",
        f"Merged: {how}.",
        "",
        f"`{out['command']}` at {out['commit'][:12]}, {out['date']}, {cpu_label(out['machine'])}, 1 thread, "
        f"batch 1, {args.runs} interleaved runs, medians.",
        "",
        "| model | chains merged | convs Tucker-2 decomposed | MMACs | "
        + " | ".join(f"{RUNTIME_LABELS[rt]} ms ({before} -> slimmed, speed-up)" for rt in RUNTIMES)
        + " |",
        "|---|---:|---:|---:|" + "---|" * len(RUNTIMES),
    ]
    for name, r in rows.items():
        merged = sum(e["applied"] for e in r["depth_entries"])
        macs = f"{r['macs']['a'] / 1e6:.0f} -> {r['macs']['b'] / 1e6:.0f}"
        cells = [
            f"{t['a_ms']:.2f} -> {t['b_ms']:.2f} ({t['speedup']:.2f}x)"
            for t in (r["runtimes"][rt] for rt in RUNTIMES)
        ]
        tucker = len(r["tucker_entries"])
        lines.append(f"| {name} | {merged} | {tucker} | {macs} | " + " | ".join(cells) + " |")
    lines += [f"| {name} | out of reach: {why} | | | | | |" for name, why in skipped.items()]
    atomic_write_text(out_path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
