#!/usr/bin/env bash
# Where inference time goes in ExecuTorch (XNNPACK), the phone runtime: BVLC GoogLeNet and
# its slimmed form (every merge of the plan, no tuning: random weights, since only speed is
# measured), per layer kind from the runtime's own per-operator profile (ETDump), 1 thread,
# batch 1, at 224x224 (3 channels). Writes benchmarks/results/profile_executorch_<name>.{json,png,txt};
# each JSON records its command, date and machine, each .txt the commit it ran at.
set -euo pipefail
cd "$(dirname "$0")/.."
DR=${DR:-.venv/bin/deeprebirth}
R=benchmarks/results
model=bvlc_googlenet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$DR" slim "$model" --no-report --out "$work/slim" > /dev/null
for spec in "$model" "$work/slim"; do
  name=$([ "$spec" = "$model" ] && echo "$model" || echo "slim_$model")
  {
    echo "commit: $(git rev-parse HEAD)$(git status --porcelain --untracked-files=no -- src benchmarks | grep -q . && echo +dirty)"
    "$DR" profile "$spec" --runtime executorch --threads 1 --runs 30 \
      --json "$R/profile_executorch_${name}.json" --plot "$R/profile_executorch_${name}.png"
  } > "$R/profile_executorch_${name}.txt"
done
