#!/usr/bin/env bash
# Plan selection under a latency budget (issue: "beyond the merge"), on the Fashion-MNIST
# BVLC GoogLeNet teacher at its trained size (64x64, 1 channel: benchmarks/reproduce.py
# teacher), ONNX Runtime, 1 thread.
# Step 1 measures the fixed plan's latency (every learned merge, what `slim` does by
# default); step 2 asks `slim --latency-budget` for that latency, choosing among the
# merges and Tucker-2 decompositions at three ranks by measured saving and reconstruction
# error on validation images (no tuning, so the errors compare the plans themselves). Writes
# benchmarks/results/select_budget_googlenet/ (selection.json, plan.json, report.md, log).
# With --drop-activations the depth chains join the options (the budget is still the
# latency of the merges alone: do they buy a lower error at that speed?), and the results go
# to select_budget_googlenet_depth/.
set -euo pipefail
cd "$(dirname "$0")/.."
DR=${DR:-.venv/bin/deeprebirth}
TEACHER=benchmarks/weights/fashion_mnist_64/teacher.safetensors
OUT=benchmarks/results/select_budget_googlenet
depth=()
case "${1:-}" in
  "") ;;
  --drop-activations) depth=(--drop-activations); OUT+=_depth ;;
  *) echo "usage: bash benchmarks/select_budget.sh [--drop-activations]" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$DR" slim bvlc_googlenet --checkpoint "$TEACHER" --no-tune --no-report --out "$work/fixed" > /dev/null
"$DR" bench bvlc_googlenet "$work/fixed" --runtime ort --threads 1 --runs 50 --json "$work/fixed.json" > /dev/null
budget=$(python3 -c "import json; print(round(json.load(open('$work/fixed.json'))['runtimes']['ort']['b_ms'], 4))")
echo "fixed plan: $budget ms in ONNX Runtime; selecting for that budget"
mkdir -p "$OUT"
"$DR" slim bvlc_googlenet --checkpoint "$TEACHER" "${depth[@]}" --data fashion-mnist --no-tune \
  --latency-budget "$budget" --runtime ort --threads 1 --selection-runs 30 \
  --out "$work/selected" 2>&1 | tee "$OUT/log.txt"
cp "$work/selected/selection.json" "$work/selected/plan.json" "$work/selected/report.md" "$OUT/"
cp "$work/fixed.json" "$OUT/fixed_plan_bench.json"
# what ran, where and when (the results above are only ever written by this script)
.venv/bin/python - "$OUT/provenance.json" "$@" <<'PY'
import json, subprocess, sys
from deeprebirth.machine import machine_info
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks", ":!benchmarks/results"], capture_output=True, text=True).stdout.strip()
info = {"command": " ".join(["bash benchmarks/select_budget.sh", *sys.argv[2:]]), "commit": commit + ("+dirty" if dirty else ""), **machine_info()}
open(sys.argv[1], "w").write(json.dumps(info, indent=2) + "\n")
PY
