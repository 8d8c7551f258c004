#!/usr/bin/env bash
# Where inference time goes in int8: BVLC GoogLeNet, MobileNetV2 and ResNet-50 at 64x64
# (1 channel, 10 classes, as the Fashion-MNIST runs; random weights, since only speed is
# measured), per layer kind from ONNX Runtime's profiler, in float (ort) and quantized as
# `export --int8` writes it (ort-int8), 1 thread, batch 1.
# Writes benchmarks/results/profile_int8_<model>.{json,png,txt}; each JSON records its
# command, date and machine, each .txt the commit it ran at.
set -euo pipefail
cd "$(dirname "$0")/.."
DR=${DR:-.venv/bin/deeprebirth}
R=benchmarks/results
for model in ${MODELS:-bvlc_googlenet mobilenet_v2 resnet50}; do
  {
    echo "commit: $(git rev-parse HEAD)$(git status --porcelain --untracked-files=no -- src benchmarks | grep -q . && echo +dirty)"
    "$DR" profile "$model" --runtime ort,ort-int8 --threads 1 --runs 30 --input-size 64 \
      --in-chans 1 --num-classes 10 \
      --json "$R/profile_int8_${model}.json" --plot "$R/profile_int8_${model}.png"
  } > "$R/profile_int8_${model}.txt"
done
