#!/usr/bin/env bash
# Where inference time goes in the paper's networks (and torchvision's GoogLeNet), per
# layer kind, in PyTorch eager and ONNX Runtime: 1 thread, batch 1, random weights.
# Writes benchmarks/results/profile_<model>.{json,png}; each JSON records its command,
# date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DR=${DR:-.venv/bin/deeprebirth}
for model in ${MODELS:-bvlc_googlenet bvlc_alexnet googlenet resnet50}; do
  "$DR" profile "$model" --runtime torch,ort --threads 1 --runs 30 \
    --json "benchmarks/results/profile_${model}.json" \
    --plot "benchmarks/results/profile_${model}.png" > "benchmarks/results/profile_${model}.txt"
done
