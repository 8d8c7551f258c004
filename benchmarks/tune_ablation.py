"""Which fine-tune recovers slimmed BVLC GoogLeNet's accuracy: an ablation at equal budget.

    .venv/bin/python benchmarks/tune_ablation.py [ARM ...] [--passes N] [--device cpu]

Every arm starts from the same student: the teacher (benchmarks/weights/fashion_mnist_64/
teacher.safetensors) slimmed with every DeepRebirth merge and tuned layer-wise with the
committed stages of recipes/fashion_mnist_64/slimmed.toml (step ``stages``, run once). Each
arm then fine-tunes it for the same number of passes over the training split (``--passes``,
1 by default) with one recipe, and is judged on the validation split only: the test split
is never read here. The arms add one ingredient at a time (ARMS below), so each one's share
is the difference to the arm before it.

Each arm's result goes to benchmarks/results/tune_ablation.json (validation top-1, the
fine-tune's minutes and batches, the command, commit, date and machine) and the table
benchmarks/results/tune_ablation.md is written from that file. Resumable: a finished arm is
skipped unless --force, an interrupted one continues from its last pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402
from reproduce import ROOT, started, top1  # noqa: E402

from deeprebirth.files import atomic_write_text, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks/results/tune_ablation.json"
TABLE = ROOT / "benchmarks/results/tune_ablation.md"
RECIPE = "recipes/fashion_mnist_64/slimmed.toml"
#: Each arm: what it is, the arm it is compared with, and its keys beside the committed
#: recipe's (finetune_lr 3e-4, distillation of the logits with temperature 4 plus the labels'
#: cross-entropy). An arm whose keys touch the stages (OWN_STAGES) runs them itself instead
#: of starting from the shared ones.
OWN_STAGES = ("tune.max_batches", "tune.reinit", "tune.all_at_once", "tune.lr=")
#: Every arm sets the keys an ablation turns on or off, whatever the defaults are.
OFF = ["tune.feature_weight=0.0", "tune.merged_lr_scale=1.0"]
LR = [*OFF, "tune.finetune_lr=1e-3"]
FEATURES = [*LR, "tune.feature_weight=1.0"]
ARMS = {
    "committed": ("the committed fine-tune: logits and labels, lr 3e-4", None, OFF),
    "lr_1e-3": ("learning rate 1e-3", "committed", LR),
    "features": (
        "lr 1e-3, plus feature distillation at the stages' block boundaries",
        "lr_1e-3",
        FEATURES,
    ),
    "features_merged_lr": (
        "lr 1e-3, features, the merged layers at 3x the learning rate",
        "features",
        [*FEATURES, "tune.merged_lr_scale=3.0"],
    ),
    "merged_lr": (
        "lr 1e-3, the merged layers at 3x (no features)",
        "lr_1e-3",
        [*LR, "tune.merged_lr_scale=3.0"],
    ),
    "features_merged_lr_10": (
        "lr 1e-3, features, the merged layers at 10x (the paper's ratio)",
        "features_merged_lr",
        [*FEATURES, "tune.merged_lr_scale=10.0"],
    ),
    "lr_2e-3": ("learning rate 2e-3 (the teacher's)", "lr_1e-3", [*OFF, "tune.finetune_lr=2e-3"]),
    "no_stages": (
        "lr 1e-3, no layer-wise stages: the fine-tune alone, from the copied weights",
        "lr_1e-3",
        [*LR, "tune.max_batches=0"],
    ),
    "no_stages_features": (
        "no stages, lr 1e-3, feature distillation at the block boundaries",
        "no_stages",
        [*FEATURES, "tune.max_batches=0"],
    ),
}


def run(out: Path, sets: list[str]) -> None:
    command = [sys.executable, "-m", "deeprebirth", "run", RECIPE, "--set", f"out={out}"]
    command += [
        a for s in ["evaluate.enabled=false", "tune.resume=true", *sets] for a in ("--set", s)
    ]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"arms": {}}


def table(results: dict) -> str:
    lines = [
        "# Fine-tune ablation: slimmed BVLC GoogLeNet, Fashion-MNIST 64x64",
        "",
        "<!-- written by benchmarks/tune_ablation.py from tune_ablation.json: do not edit -->",
        "",
        "Every arm fine-tunes the same layer-wise-tuned student (the committed stages: 11 of "
        "200 batches) for the same passes, except arms that change the stages (they run their "
        "own); validation top-1 only (the test split is not read). Minutes are the fine-tune's "
        "wall time on 2 cores (the shared stages' are below; the first arm shared the cores "
        "with other jobs). One run per arm: on 5,000 images a top-1 near 90% has a standard "
        "error of about 0.4 points, so differences smaller than that are within noise.",
        "",
        "| arm | recipe | passes | val top-1 % | against | difference | minutes |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    arms = results["arms"]
    for key, arm in arms.items():
        base = ARMS[key][1] if key in ARMS else None
        delta = f"{arm['top1_val'] - arms[base]['top1_val']:+.2f}" if base in arms else "—"
        lines.append(
            f"| {key} | {arm['what']} | {arm['passes']} | {arm['top1_val']:.2f} | "
            f"{base or '—'} | {delta} | {arm['minutes']:.1f} |"
        )
    stages = results.get("stages")
    if stages:
        lines += [
            "",
            f"Stages (shared): val top-1 {stages['top1_val']:.2f}%, "
            f"{stages['minutes']:.1f} minutes.",
        ]
    arm = next(iter(results["arms"].values()), None)
    if arm:
        m = arm["machine"]
        lines += ["", f"Measured {arm['date']} on {m.get('cpu', m)}; command: `{arm['command']}`."]
    return "\n".join(lines) + "\n"


def save(results: dict) -> None:
    write_json(RESULTS, results)
    atomic_write_text(TABLE, table(results))


def evaluated(out: Path, extra: dict) -> dict:
    from deeprebirth.slimming import load

    report = json.loads((ROOT / out / "tune_report.json").read_text())
    records = report["tuning"]["stages"]
    return {
        **extra,
        "path": str(out),
        "top1_val": top1(load(ROOT / out), "val"),
        "minutes": sum(r.get("seconds", 0) for r in records) / 60,
        "batches": sum(r.get("steps", 0) for r in records),
        **provenance(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("arms", nargs="*", help=f"any of {', '.join(ARMS)} (default: all)")
    p.add_argument("--passes", type=int, default=1, help="fine-tune passes per arm")
    p.add_argument("--work", default="runs/ablation", help="where the runs are written")
    p.add_argument("--device", default="cpu", help="cpu, cuda")
    p.add_argument("--force", action="store_true", help="run arms whose entry exists already")
    p.add_argument("--table", action="store_true", help="only write the table from the results")
    args = p.parse_args()
    if args.table:
        save(load_results())
        return
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {', '.join(unknown)} (known: {', '.join(ARMS)})")
    work = Path(args.work)
    device = f"tune.device={args.device}"
    results = load_results()
    stages = work / "stages"
    if "stages" not in results:
        provenance = started(stages)
        if not (stages / "tune_report.json").is_file():
            run(stages, [device, "tune.finetune_batches=0"])
        results["stages"] = evaluated(stages, {"what": "stages only", **provenance})
        save(results)
    for key in args.arms or list(ARMS):
        if key in results["arms"] and not args.force:
            print(f"{key}: done ({RESULTS.relative_to(ROOT)}); --force runs it again")
            continue
        what, _, sets = ARMS[key]
        out = work / key
        provenance = started(out)
        own = any(s.startswith(OWN_STAGES) for s in sets)
        start = [] if own else [f"tune.start_from={stages}"]
        run(out, [device, *start, f"tune.finetune_epochs={args.passes}", *sets])
        arm = evaluated(out, {"what": what, "passes": args.passes, "sets": sets, **provenance})
        results["arms"][key] = arm
        save(results)
        print(f"{key}: val top-1 {arm['top1_val']:.2f}% ({arm['minutes']:.1f} min)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
