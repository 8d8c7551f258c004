"""The paper's comparison at equal speed (issue #32): BVLC GoogLeNet selected for SqueezeNet
1.1's latency.

The committed Fashion-MNIST teacher (BVLC GoogLeNet) and SqueezeNet 1.1, at their trained
size (64x64, 1 channel) or only timed at a larger one (``--sizes 224``: the same weights, the
same architectures). SqueezeNet 1.1 is timed beside the teacher in ONNX Runtime (1 thread,
pairs, 3 sessions); its latency is the budget of a selection over every option the selector
has (learned merges, depth chains, Tucker-2 at the EVBMF rank and at 1/2 and 1/4 of the
channels), priced by their output error on validation images, as `deeprebirth slim
--latency-budget-of` does. If the budget is out of reach, the plan with every group's fastest
option is built instead. Then the chosen (or fastest) plan is measured beside the teacher with
SqueezeNet 1.1 and, at the trained size, the committed slimmed + Tucker-2 student and the int8
files of it and of SqueezeNet 1.1 (like with like: float with float, int8 with int8). With
``--runtime ort-int8`` everything is timed in int8 instead (each network quantized as the
int8 export is, ranges from a random input: ``deeprebirth.export.int8.int8_to_time``): the
budget is SqueezeNet 1.1's int8 latency, the selection times its options in int8, and the
student is timed quantized so (its int8 file is not: an ONNX file runs as it is). Nothing is
tuned and the test split is not read.

``--tuned``: the other half, once ``benchmarks/reproduce.py googlenet_at_squeezenet_speed
googlenet_at_squeezenet_speed_int8`` has tuned the plan (the fastest, where the budget is out
of reach) with the default recipe: the student and its int8 file beside SqueezeNet 1.1's at
64x64 in ONNX Runtime, float with float and int8 with int8, with the top-1 reproduce.py
recorded (validation and test, each read once there).

Writes benchmarks/results/paper_comparison.{json,md} with the command, commit, date and
machine (a run replaces the row of its size and runtime, or the tuned row).

    .venv/bin/python benchmarks/paper_comparison.py [--sizes 64] [--runtime ort|ort-int8]
    .venv/bin/python benchmarks/paper_comparison.py --tuned

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

from provenance import provenance, record_row, write_page
from torch import nn

from deeprebirth.artifacts import open_model
from deeprebirth.data import get_dataset, get_loader
from deeprebirth.export import OnnxModel
from deeprebirth.graph import example_input
from deeprebirth.planning import make_plan
from deeprebirth.planning.blocks import SESSIONS
from deeprebirth.planning.select import BudgetError, error_images, select_plan, tucker_plans
from deeprebirth.profiling.bench import latencies
from deeprebirth.profiling.stats import count_macs
from deeprebirth.recipe import ModelConfig
from deeprebirth.transforms import apply_plan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/paper_comparison"
WEIGHTS = ROOT / "benchmarks/weights/fashion_mnist_64"
TRAINED_SIZE = 64
#: The selection's margin under the budget, as a recipe's ``select.margin`` has it.
MARGIN = 0.03


def load(name: str, checkpoint: str | None, size: int):
    spec = ModelConfig(
        name if checkpoint else str(WEIGHTS / name),
        checkpoint=str(WEIGHTS / checkpoint) if checkpoint else None,
        num_classes=10,
        in_chans=1,
        input_size=size,
    )
    return open_model(spec).model.eval()


def run_one(size: int, runs: int, runtime: str) -> dict:
    teacher = load("bvlc_googlenet", "teacher.safetensors", size)
    squeezenet = load("squeezenet1_1", "squeezenet1_1.safetensors", size)
    example = example_input(1, 1, size)
    print(f"--- {size}x{size}: SqueezeNet 1.1 beside the teacher on {runtime}", flush=True)
    t = latencies(
        {"teacher": (teacher, example), "squeezenet": (squeezenet, example)},
        runtimes=[runtime],
        runs=runs,
        sessions=SESSIONS,
        beside="teacher",
    )[runtime]
    budget_ms = t["squeezenet"].median_ms
    print(f"budget: {budget_ms:.3f} ms (the teacher {t['teacher'].median_ms:.3f} ms)", flush=True)
    plan = make_plan(teacher, example, name="bvlc_googlenet", drop_activations=True)
    ds = get_dataset("fashion-mnist", "val", input_size=size, in_chans=1)
    batches = [x for x, _ in islice(get_loader(ds, 16), error_images(size, 16) // 16)]
    t0 = time.time()
    try:
        selection = select_plan(
            teacher,
            example,
            plan,
            budget_ms,
            tucker_plans=tucker_plans(teacher, example, name="bvlc_googlenet"),
            batches=batches,
            runtime=runtime,
            runs=runs,
            margin=MARGIN,
            use_cache=False,
            log=print,
        )
        chosen, predicted_ms, reached = selection.plan, selection.predicted_ms, True
        options = len(selection.options)
        blocks_ms = selection.extra.get("blocks_ms")
    except BudgetError as missed:
        print(f"out of reach: {missed}", flush=True)
        chosen, predicted_ms, reached = missed.fastest, missed.fastest_ms, False
        options = blocks_ms = None
    select_s = time.time() - t0
    built, _ = apply_plan(teacher, chosen, example)
    models = {"teacher": teacher, "squeezenet": squeezenet, "googlenet": built}
    if size == TRAINED_SIZE:  # the committed student and int8 files run at their size only
        models["slimmed_tucker"] = load("slimmed_tucker", None, size)
        if runtime == "ort":  # the int8 files beside them (ort-int8 quantizes the others)
            models |= {
                "slimmed_tucker_int8": OnnxModel(WEIGHTS / "slimmed_tucker_int8.onnx"),
                "squeezenet_int8": OnnxModel(WEIGHTS / "squeezenet1_1_int8.onnx"),
            }
    print(f"measuring {', '.join(models)} beside the teacher on {runtime}", flush=True)
    t = latencies(
        {k: (m, example) for k, m in models.items()},
        runtimes=[runtime],
        runs=runs,
        sessions=SESSIONS,
        beside="teacher",
    )[runtime]
    enabled = [e for e in chosen.entries if e.enabled]
    return {
        "size": size,
        "runtime": runtime,
        "budget_ms": budget_ms,
        "reached": reached,
        "options": options,
        "predicted_ms": predicted_ms,  # the table's sum of savings
        "blocks_ms": blocks_ms,  # the chosen plan's blocks, where the selector returned one
        "ms": {k: v.median_ms for k, v in t.items()},
        "macs": {
            k: count_macs(m, example) for k, m in models.items() if not isinstance(m, OnnxModel)
        },
        "entries": len(enabled),
        "tucker_entries": sum(e.kind == "tucker" for e in enabled),
        "select_seconds": round(select_s, 1),
    }


#: The tuned comparison (``--tuned``): results file entries of the student, the reference
#: and their int8 files (benchmarks/reproduce.py writes them).
TUNED = {
    "googlenet": "googlenet_at_squeezenet_speed",
    "squeezenet": "squeezenet1_1",
    "googlenet_int8": "googlenet_at_squeezenet_speed_int8",
    "squeezenet_int8": "squeezenet1_1_int8",
}
STUDENTS = ROOT / "benchmarks/results/fashion_mnist_64.json"


def run_tuned(runs: int) -> dict:
    """The tuned student (``reproduce.py googlenet_at_squeezenet_speed``) beside SqueezeNet
    1.1 at 64x64 in ONNX Runtime, float with float and int8 with int8, each beside the
    teacher; top-1 as reproduce.py measured it (the test split read once, by that step)."""
    entries = json.loads(STUDENTS.read_text())["models"]
    missing = [k for k in TUNED.values() if k not in entries]
    if missing:
        raise SystemExit(
            f"paper_comparison.py: no {', '.join(missing)} in {STUDENTS.relative_to(ROOT)}: "
            "run benchmarks/reproduce.py googlenet_at_squeezenet_speed "
            "googlenet_at_squeezenet_speed_int8 first"
        )
    size = TRAINED_SIZE
    example = example_input(1, 1, size)
    models = {"teacher": load("bvlc_googlenet", "teacher.safetensors", size)}
    for key, entry in TUNED.items():
        path = ROOT / entries[entry]["path"]
        models[key] = OnnxModel(path) if path.suffix == ".onnx" else load(path.name, None, size)
    print(f"measuring {', '.join(models)} beside the teacher on ort", flush=True)
    t = latencies(
        {k: (m, example) for k, m in models.items()},
        runtimes=["ort"],
        runs=runs,
        sessions=SESSIONS,
        beside="teacher",
    )["ort"]
    floats = {k: m for k, m in models.items() if not isinstance(m, OnnxModel)}
    return {
        "size": size,
        "runtime": "ort",
        "tuned": True,
        "ms": {k: v.median_ms for k, v in t.items()},
        "macs": {k: count_macs(m, example) for k, m in floats.items()},
        "convs": {k: sum(isinstance(x, nn.Conv2d) for x in m.modules()) for k, m in floats.items()},
        "top1": {
            k: {s: entries[e][f"top1_{s}"] for s in ("val", "test")} for k, e in TUNED.items()
        },
        "tuning_cost": entries[TUNED["googlenet"]].get("cost"),
    }


def tuned_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Tuned: accuracy at the latency each reaches (64x64)",
        "",
        "The fastest plan above (the budget is out of reach), tuned with the default recipe "
        "(`python benchmarks/reproduce.py googlenet_at_squeezenet_speed`: gradual "
        "linearization of the depth chains, layer-wise stages sharing the slimmed student's "
        "stage batches, the fine-tune), and its int8 file (`..._int8`, as every int8 row of "
        "the students), beside SqueezeNet 1.1 and its int8 file: float with float, int8 with "
        "int8, each timed beside the teacher in ONNX Runtime in one run (1 thread, pairs, "
        "median of 3 sessions). Top-1 on Fashion-MNIST's validation and test splits as "
        "reproduce.py measured them.",
        "",
        "| | GoogLeNet top-1 val / test % | SqueezeNet 1.1 top-1 val / test % | GoogLeNet ms "
        "| SqueezeNet 1.1 ms | / SqueezeNet | GoogLeNet MMACs | SqueezeNet MMACs "
        "| GoogLeNet convs | SqueezeNet convs | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        for kind, g, q in (
            ("float", "googlenet", "squeezenet"),
            ("int8", "googlenet_int8", "squeezenet_int8"),
        ):
            a, b = r["top1"][g], r["top1"][q]
            macs = (
                f"{r['macs'][g] / 1e6:.1f} | {r['macs'][q] / 1e6:.1f} "
                f"| {r['convs'][g]} | {r['convs'][q]}"
                if g in r["macs"]
                else "— | — | — | —"
            )
            lines.append(
                f"| {kind} | {a['val']:.2f} / {a['test']:.2f} | {b['val']:.2f} / {b['test']:.2f} "
                f"| {r['ms'][g]:.3f} | {r['ms'][q]:.3f} | {r['ms'][g] / r['ms'][q]:.2f}x "
                f"| {macs} | {r['date'][:10]}, {r['machine']['cpu']} |"
            )
    cost = rows[-1].get("tuning_cost") or {}
    if cost:
        lines += [
            "",
            f"Its tuning: {cost.get('passes', float('nan')):.2f} passes over the training "
            f"split ({cost.get('minutes', float('nan')):.0f} minutes); SqueezeNet 1.1 was "
            "trained with the teacher's recipe, then distilled from the teacher for 5 passes.",
        ]
    return lines


def write_md(data: dict) -> None:
    lines = [
        "# The paper's comparison at equal speed: BVLC GoogLeNet selected for SqueezeNet 1.1's "
        "latency",
        "",
        "<!-- written by benchmarks/paper_comparison.py from paper_comparison.json: do not "
        "edit -->",
        "",
        "The committed Fashion-MNIST teacher and SqueezeNet 1.1 (1 channel; trained at 64x64, "
        "only timed at larger sizes). Budget: SqueezeNet 1.1's latency in ONNX Runtime, float "
        "(`ort`) or every network quantized to int8 (`ort-int8`), timed beside the teacher. Options: every learned merge, depth chain and Tucker-2 rank "
        "(EVBMF, 1/2, 1/4), priced on validation images, no tuning. `GoogLeNet`: the "
        "selected plan, or, where the budget is out of reach, the plan with every group's "
        "fastest option, measured beside the teacher (1 thread, pairs, median of 3 sessions). "
        "At the trained size also the committed slimmed + Tucker-2 student (EVBMF ranks, "
        "tuned); in float also the int8 files.",
        "",
        "| input | runtime | budget (SqueezeNet 1.1) ms | in reach by the table | met | GoogLeNet: "
        "table's sum ms | GoogLeNet measured ms | SqueezeNet 1.1 beside it ms | / SqueezeNet "
        "| teacher ms | slimmed + "
        "Tucker-2 ms | its int8 ms | SqueezeNet int8 ms | GoogLeNet MMACs | SqueezeNet MMACs "
        "| selection s | run |",
        "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ms(r: dict, k: str) -> str:
        return f"{r['ms'][k]:.3f}" if k in r["ms"] else "—"

    for r in (r for r in data["rows"] if not r.get("tuned")):
        lines.append(
            f"| {r['size']} | {r.get('runtime', 'ort')} | {r['budget_ms']:.3f} | {'yes' if r['reached'] else 'no'} "
            f"| {'yes' if r['ms']['googlenet'] <= r['budget_ms'] else 'no'} "
            f"| {r['predicted_ms']:.3f} | {ms(r, 'googlenet')} | {ms(r, 'squeezenet')} "
            f"| {r['ms']['googlenet'] / r['ms']['squeezenet']:.2f}x | {ms(r, 'teacher')} "
            f"| {ms(r, 'slimmed_tucker')} | {ms(r, 'slimmed_tucker_int8')} "
            f"| {ms(r, 'squeezenet_int8')} | {r['macs']['googlenet'] / 1e6:.1f} "
            f"| {r['macs']['squeezenet'] / 1e6:.1f} | {r['select_seconds']:.0f} "
            f"| {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    lines += [
        "",
        "`in reach by the table`: the options' savings, summed, reach the budget (the "
        "selector returns its choice; else it says the budget is out of reach and the plan "
        "with every group's fastest option is measured). `met`: measured within the budget. "
        "`SqueezeNet 1.1 beside it`: timed again in the same run as GoogLeNet, each beside the "
        "teacher (the budget was timed before the selection; on a machine whose speed drifts "
        "the two differ). `/ SqueezeNet`: GoogLeNet's latency over SqueezeNet 1.1's, side by "
        "side in that run (above 1: slower than SqueezeNet 1.1).",
    ]
    lines += tuned_lines([r for r in data["rows"] if r.get("tuned")])
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default=str(TRAINED_SIZE), help="input sizes, comma-separated")
    p.add_argument("--runs", type=int, default=15, help="timed runs per session")
    p.add_argument("--runtime", default="ort", choices=("ort", "ort-int8"), help="float or int8")
    p.add_argument(
        "--tuned",
        action="store_true",
        help="instead: the tuned student and its int8 file beside SqueezeNet 1.1's, at 64x64 "
        "in ORT, with their top-1 (after reproduce.py googlenet_at_squeezenet_speed[_int8])",
    )
    args = p.parse_args()
    run = provenance()  # of the code that runs: files edited meanwhile do not count
    if args.tuned:
        row = run_tuned(args.runs) | run
        write_md(record_row(RESULTS.with_suffix(".json"), row, ("size", "runtime", "tuned")))
        return
    for size in map(int, args.sizes.split(",")):
        row = run_one(size, args.runs, args.runtime) | run
        data = record_row(RESULTS.with_suffix(".json"), row, ("size", "runtime", "tuned"))
        write_md(data)


if __name__ == "__main__":
    main()
