"""The real benchmark: slim the Fashion-MNIST BVLC GoogLeNet teacher and tune it.

Runs, one after another, each with the same wall-clock budget for tuning:
  1. layer-wise, label-free (the default) -> the committed slimmed model;
  2. layer-wise, with labels in the final fine-tune;
  3. all merges trained at once (one stage judged at the output), label-free;
  4. slimmed + Tucker-2 (EVBMF ranks), layer-wise, label-free -> committed too.
Each slimmed model is re-evaluated from its saved files with `deeprebirth evaluate`, and the
results go to benchmarks/results/fashion_mnist_googlenet.json (with command, date, machine).

    .venv/bin/python benchmarks/tune_fashion_mnist.py [--budget-minutes 6]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deeprebirth.profiling.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
DR = str(ROOT / ".venv/bin/deeprebirth")
TEACHER = "benchmarks/weights/bvlc_googlenet_fashion_mnist_teacher.safetensors"
SLIMMED = "benchmarks/weights/bvlc_googlenet_fashion_mnist_slim"
SLIMMED_TUCKER = "benchmarks/weights/bvlc_googlenet_fashion_mnist_slim_tucker"
RESULTS = ROOT / "benchmarks/results/fashion_mnist_googlenet.json"

p = argparse.ArgumentParser()
p.add_argument("--budget-minutes", type=float, default=5.0)
args = p.parse_args()


def run(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def evaluate(path: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        run(DR, "evaluate", path, "--data", "fashion-mnist", "--json", f.name)
        return json.loads(Path(f.name).read_text())


def slim(out: str, *extra: str) -> dict:
    t0 = time.time()
    run(
        DR,
        "slim",
        "bvlc_googlenet",
        "--checkpoint",
        TEACHER,
        "--data",
        "fashion-mnist",
        "--max-batches",
        "100000",
        "--finetune-batches",
        "100000",
        "--budget-minutes",
        str(args.budget_minutes),
        "--fp16-weights",
        "--out",
        out,
        *extra,
    )
    report = json.loads((ROOT / out / "tune_report.json").read_text())
    acc = evaluate(out)
    return {
        "path": out,
        "top1": acc["top1"],
        "top5": acc["top5"],
        "n": acc["n"],
        "tune_minutes": sum(s["seconds"] for s in report["tuning"]["stages"]) / 60,
        "wall_minutes": (time.time() - t0) / 60,
        "stages": report["tuning"]["stages"],
    }


teacher = evaluate(TEACHER)
results = {
    "command": " ".join(["python", *sys.argv]),
    "budget_minutes": args.budget_minutes,
    "machine": machine_info(),
    "teacher": {
        "path": TEACHER,
        "top1": teacher["top1"],
        "top5": teacher["top5"],
        "n": teacher["n"],
    },
}
results["slimmed"] = slim(SLIMMED)
results["slimmed_tucker"] = slim(SLIMMED_TUCKER, "--tucker")
with tempfile.TemporaryDirectory() as tmp:
    results["slimmed_labels"] = slim(f"{tmp}/labels", "--labels")
    results["slimmed_all_at_once"] = slim(f"{tmp}/all", "--all-at-once")
    for key in ("slimmed_labels", "slimmed_all_at_once"):
        results[key]["path"] = None  # not kept
for key in ("slimmed", "slimmed_tucker", "slimmed_labels", "slimmed_all_at_once"):
    results[key]["drop_points"] = 100 * (results["teacher"]["top1"] - results[key]["top1"])
RESULTS.write_text(json.dumps(results, indent=2) + "\n")
summary = {
    k: (v["top1"], v.get("drop_points"))
    for k, v in results.items()
    if isinstance(v, dict) and "top1" in v
}
print(json.dumps(summary, indent=2))
for path in (SLIMMED, SLIMMED_TUCKER):
    shutil.rmtree(ROOT / f"{path}.partial", ignore_errors=True)
