#!/usr/bin/env bash
# Slimming speed and memory: original vs slimmed (no tuning; random weights, since only
# speed is measured), 1 thread, batch 1, at each model's own input size, interleaved runs
# in one process. Writes, per model, benchmarks/results/slim_<model>/ (plan.json; the
# weights are not kept), bench_<model>.json (speed-up, memory) and profile_slim_<model>.*
# (where the time goes after slimming, beside profile_<model>.* from profile_paper_nets.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DR=${DR:-.venv/bin/deeprebirth}
R=benchmarks/results
for model in ${MODELS:-bvlc_googlenet googlenet bvlc_alexnet resnet50}; do
  work=$(mktemp -d)
  "$DR" slim "$model" --out "$work/slim" > /dev/null
  "$DR" bench "$model" "$work/slim" --runtime torch,ort --threads 1 --runs 30 \
    --json "$R/bench_${model}.json" > "$R/bench_${model}.txt"
  "$DR" profile "$work/slim" --runtime torch,ort --threads 1 --runs 30 \
    --json "$R/profile_slim_${model}.json" --plot "$R/profile_slim_${model}.png" > "$R/profile_slim_${model}.txt"
  mkdir -p "$R/slim_${model}" && cp "$work/slim/plan.json" "$R/slim_${model}/plan.json"
  rm -rf "$work"
done
