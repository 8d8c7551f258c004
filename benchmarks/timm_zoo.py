"""A sample of timm's CNN families through the tool: does every one slim, export and not get
slower from an exact-only slim?

    .venv/bin/python benchmarks/timm_zoo.py [--models a,b,...] [--size 64] [--runs 50]

For each model (timm, random weights, batch-norm statistics randomised so that folds matter):
the plan, ``slim(exact_only=True)`` with its parity against the original (float32, eager),
the default slim (every merge, no tuning: does it apply and run), ONNX export of the
original and of the exact-only slim, and their ONNX Runtime latencies side by side
(interleaved in one process, 1 thread, batch 1, medians). Where the plan has exact merges
that can cost time, the exact-only slim made for ORT (``runtime="ort"``: those merges timed
there and left off where slower) too, timed beside them when it left any off. A model the tool refuses is
recorded with its one-line reason.

Writes benchmarks/results/timm_zoo.{json,md} with the command, commit, date and machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from deeprebirth import get_model
from deeprebirth.errors import DeepRebirthError
from deeprebirth.export.onnx import to_onnx
from deeprebirth.export.onnx_file import ort_session
from deeprebirth.graph import example_input
from deeprebirth.machine import cpu_label
from deeprebirth.planning.exact_timing import left_off_why
from deeprebirth.profiling.ort_runtime import ort_runner
from deeprebirth.profiling.timing import measure_interleaved
from deeprebirth.slimming import slim
from deeprebirth.transforms import MERGES
from deeprebirth.transforms.runner import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timm_reparam import optimized_graph, randomize_batchnorm, sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
#: The families of tests/test_timm.py, and a few larger models.
MODELS = [
    "resnet10t",
    "resnet50",
    "mobilenetv3_small_050",
    "tinynet_e",
    "efficientnet_b0",
    "regnetx_002",
    "regnety_002",
    "convnext_atto",
    "lcnet_050",
    "ghostnet_050",
    "ghostnetv2_100",
    "dla34",
    "mnasnet_small",
    "mixnet_s",
    "darknet17",
    "resnest14d",
    "skresnet18",
    "hardcorenas_a",
    "ese_vovnet19b_slim_dw",
    "nf_resnet26",
    "efficientvit_b0",
    "repvgg_a0",
    "mobileone_s0",
    "fastvit_t8",
    "repghostnet_050",
    "dpn48b",
    "cs3darknet_focus_s",
    "hgnetv2_b0",
    "inception_next_atto",
    "mobilenetv4_conv_small",
    "densenet121",
    "xception41",
    "tf_mobilenetv3_small_minimal_100",
]


def run_model(name: str, size: int, runs: int) -> dict:
    t0 = time.time()
    try:
        torch.manual_seed(0)
        original = get_model(f"timm:{name}")
        randomize_batchnorm(original)
        x = example_input(1, 3, size)
        exact = slim(original, name=f"timm:{name}", input_size=size, exact_only=True)
        default = slim(original, name=f"timm:{name}", input_size=size)
        with torch.no_grad():
            reference = original(x)
            parity = relative_error(exact.model(x), reference)
            default_runs = default.model(x).shape == reference.shape
        # timed on ORT (plan.runtime): the exact merges that can cost time left off if slower
        timed = [e for e in exact.plan.entries if e.enabled and MERGES[e.kind].can_cost_time]
        checked = (
            slim(original, name=f"timm:{name}", input_size=size, exact_only=True, runtime="ort")
            if timed
            else None
        )
        left_off = (
            {}
            if checked is None
            else {e.id: left_off_why(e) for e in checked.plan.entries if left_off_why(e)}
        )
        example = x.numpy().astype(np.float32)
        models = [("original", original), ("exact", exact.model)]
        if left_off:
            models.append(("checked", checked.model))
        runners = {k: ort_runner(ort_session(to_onnx(m, x), 1), example) for k, m in models}
    except DeepRebirthError as e:
        print(f"{name}: refused: {e}")
        return {"refused": str(e)}
    timings = measure_interleaved(runners, runs=runs, warmup=max(5, runs // 10))
    kinds: dict[str, int] = {}
    for entry_id in exact.report.applied:
        kinds[entry_id.partition(":")[0]] = kinds.get(entry_id.partition(":")[0], 0) + 1
    ms = {k: t.median_ms for k, t in timings.items()}
    record = {
        "ort_ms": {k: t.to_dict() for k, t in timings.items()},
        "exact_speedup": ms["original"] / ms["exact"],
        # the graphs ORT runs after its own optimisations: the same, a speed-up lies in the sessions
        "same_graph_in_ort": optimized_graph(original, x) == optimized_graph(exact.model, x),
        "relative_error": parity,
        "exact_applied": kinds,
        "exact_reverted": [r[0] for r in exact.report.reverted],
        "default_applied": len(default.report.applied),
        "default_learned": sum(
            1 for e in default.plan.entries if not e.exact and e.id in default.report.applied
        ),
        "default_runs": default_runs,
        "timed_on_ort": len(timed),
        "left_off_on_ort": left_off,
        **({"checked_speedup": ms["original"] / ms["checked"]} if left_off else {}),
        "seconds": round(time.time() - t0, 1),
    }
    print(
        f"{name}: exact-only {record['exact_speedup']:.2f}x in ORT, parity {parity:.1e}, "
        f"{kinds}; default slim: {record['default_applied']} merges "
        f"({record['default_learned']} learned) ({record['seconds']} s)"
    )
    return record


def table(data: dict) -> str:
    lines = [
        f"# timm's CNNs through deeprebirth ({data['size']}x{data['size']}, random weights)",
        "",
        f"`{data['command']}` at {data['commit'][:10]}, {data['date']}, "
        f"{cpu_label(data['machine'])}. Exact-only slim against the original in ONNX Runtime, "
        f"1 thread, batch 1, medians of {data['runs']} interleaved runs, one session per "
        "model; same graph in ORT: the graphs ORT runs after its own optimisations are the "
        "same (a speed-up off 1.00x then lies in the sessions, not in the slim); parity: largest "
        "output difference over the largest output (eager, float32); default slim: every "
        "merge the plan finds, untuned.",
        "",
        "| model | original ms | exact-only ms | speed-up | same graph in ORT | parity | "
        "exact merges | default slim merges (learned) | timed on ORT: left off (speed-up then) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in data["models"].items():
        if "refused" in r:
            lines.append(f"| {name} | refused: {r['refused']} | | | | | | | |")
            continue
        ms = {k: r["ort_ms"][k]["median_ms"] for k in ("original", "exact")}
        merges = ", ".join(f"{k} {n}" for k, n in sorted(r["exact_applied"].items()))
        lines.append(
            f"| {name} | {ms['original']:.2f} | {ms['exact']:.2f} | {r['exact_speedup']:.2f}x "
            f"| {_yes_no(r.get('same_graph_in_ort'))} | {r['relative_error']:.1e} | {merges} | {r['default_applied']} "
            f"({r['default_learned']}) | {_checked(r)} |"
        )
    done = [r for r in data["models"].values() if "refused" not in r]
    slower = [n for n, r in data["models"].items() if r.get("exact_speedup", 1) < 0.97]
    drift = [n for n in slower if data["models"][n].get("same_graph_in_ort")]
    timed = [r for r in done if r.get("timed_on_ort")]
    left = sum(len(r.get("left_off_on_ort", {})) for r in timed)
    lines += [
        "",
        f"{len(done)} of {len(data['models'])} slim and export; exact-only slower than the "
        f"original by more than 3%: {', '.join(slower) or 'none'}"
        + (
            f" ({', '.join(drift)}: the same graph in ORT, so the difference is in the "
            "sessions, not in what they compute)"
            if drift
            else ""
        )
        + f". With `plan.runtime = "
        f'"ort"` ({len(timed)} models have exact merges that can cost time, '
        f"{sum(r['timed_on_ort'] for r in timed)} entries timed): {left} left off as slower.",
    ]
    return "\n".join(lines) + "\n"


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "no"


def _checked(r: dict) -> str:
    if not r.get("timed_on_ort"):
        return "nothing to time"
    left = r.get("left_off_on_ort", {})
    if not left:
        return f"none of {r['timed_on_ort']}"
    return f"{len(left)} of {r['timed_on_ort']} ({r['checked_speedup']:.2f}x)"


def main() -> None:
    sweep("timm_zoo", __doc__, run_model, table, ",".join(MODELS), 64, 50)


if __name__ == "__main__":
    main()
