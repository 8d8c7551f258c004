"""Does an option's error before tuning rank options as tuning leaves them? (issue #32 item 2)

The latency-budget selection and the tuning budget's fit (``tune.fit_budget``) weigh each
option (a learned merge, a depth chain) by its error at the output with nothing tuned yet.
What an option costs in the end is its error after tuning. This measures, for every option of
a trained Fashion-MNIST network (64x64, the committed checkpoints of ``reproduce.py``):

- ``before``: the option applied alone to the exact-only model, its error at the output on
  512 validation images (the selection's measure, on more images);
- each proxy ``S/F`` of ``--proxies``: the same after ``S`` batches per stage of
  layer-wise tuning on train (the option's stages, each merged layer against the original at
  its block's output; a depth chain's activations dropped at once, as
  ``tune.linearize_batches = 0`` does) and ``F`` batches of the whole-network fine-tune (as
  the recipe ends; what ``select.cost_batches = N`` computes is ``N/N``);
- ``tuned``: the same after ``--long`` batches per stage (the default recipe's stage length)
  and ``--long`` batches of the whole-network fine-tune (distillation and labels, at the
  learning rate the network's committed recipe run chose: GoogLeNet 1e-3, MobileNetV2
  1e-4), and the validation top-1 after it. (Stages alone are no measure: they match each
  block's output and can leave the network's output worse, the fine-tune is what joins
  them.)

and the Spearman rank correlation of each proxy (``before`` included) with ``tuned`` and
with the top-1 lost: a proxy that
ranks like tuning is one the selection can trust. Train images tune, validation images judge;
the test split is not read. Writes benchmarks/results/cost_proxy.{json,md} with the command,
commit, date and machine (a run replaces its network's row).

    .venv/bin/python benchmarks/cost_proxy.py [--models bvlc_googlenet,mobilenet_v2]
        [--proxies 20/0,20/20,50/50] [--long 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from provenance import provenance, record_row, write_page
from scipy.stats import spearmanr

from deeprebirth.artifacts import open_model
from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import evaluate
from deeprebirth.graph import example_input
from deeprebirth.planning import make_plan
from deeprebirth.planning.select import build_options, reconstruction_error, with_entries
from deeprebirth.recipe import ModelConfig
from deeprebirth.slimming import slim, tune
from deeprebirth.tuning import TuneConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/cost_proxy"
WEIGHTS = ROOT / "benchmarks/weights/fashion_mnist_64"
#: The trained networks and the plan options of each: GoogLeNet's learned merges (the
#: DeepRebirth plan, what the tuning budget's fit chooses among), MobileNetV2's depth chains.
NETWORKS = {
    "bvlc_googlenet": ("teacher.safetensors", {}, 1e-3),
    "mobilenet_v2": ("mobilenet_v2.safetensors", {"drop_activations": True}, 1e-4),
}
VAL_BATCHES = 8  # of 64 images, where each error is measured (the first 4 are the probe)


def learned_options(model, example, name, plan_kw):
    plan = make_plan(model, example, name=name, **plan_kw)
    return plan, build_options(model, example, plan, [])


def tuned_error(
    model, plan, entries, batches, train, steps, finetune, lr, workdir
) -> tuple[float, object]:
    result = slim(model, with_entries(plan, entries))
    if steps:
        config = TuneConfig(
            max_batches=steps, finetune_batches=finetune, finetune_lr=lr, linearize_batches=0
        )
        tune(result, model, train, config, workdir, probe=batches[:4])
    return reconstruction_error(result.model, model, [x for x, _ in batches]), result.model


def parse_proxies(text: str) -> list[tuple[int, int]]:
    pairs = [p.split("/") for p in text.split(",")]
    if not all(len(p) == 2 and all(v.isdigit() for v in p) for p in pairs):
        raise argparse.ArgumentTypeError(f"STAGES/FINETUNE pairs, not {text!r}")
    return [(int(a), int(b)) for a, b in pairs]


def run_one(name: str, args) -> dict:
    checkpoint, plan_kw, lr = NETWORKS[name]
    spec = ModelConfig(name, checkpoint=str(WEIGHTS / checkpoint), num_classes=10, in_chans=1)
    model = open_model(spec).model.eval()
    example = example_input(1, 1, 64)
    plan, options = learned_options(model, example, name, plan_kw)
    val = get_dataset("fashion-mnist", "val", input_size=64, in_chans=1)
    batches = list(islice(get_loader(val, 64), VAL_BATCHES))
    train = get_loader(get_dataset("fashion-mnist", "train", input_size=64, in_chans=1), 64, True)
    teacher_top1 = evaluate(model, get_loader(val, 256))["top1"]
    runs = {"before": (0, 0)} | {f"{a}/{b}": (a, b) for a, b in args.proxies}
    rows = []
    t0 = time.time()
    for i, o in enumerate(options):
        row = {"option": o.key, "proxies": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for key, (steps, finetune) in (runs | {"tuned": (args.long, args.long)}).items():
                torch.manual_seed(0)
                error, tuned = tuned_error(
                    model, plan, o.entries, batches, train, steps, finetune, lr, Path(tmp) / key
                )
                if key in runs:
                    row["proxies"][key] = error
                else:
                    row["tuned"] = error
        row["tuned_top1"] = evaluate(tuned, get_loader(val, 256))["top1"]
        rows.append(row)
        said = ", ".join(f"{k} {v:.4f}" for k, v in row["proxies"].items())
        print(
            f"{name} {i + 1}/{len(options)} {o.key}: {said}, tuned {row['tuned']:.4f} "
            f"(val top-1 {100 * row['tuned_top1']:.2f})",
            flush=True,
        )
    errors = [r["tuned"] for r in rows]
    top1 = [-r["tuned_top1"] for r in rows]
    spearman = {
        k: {
            "tuned": spearmanr([r["proxies"][k] for r in rows], errors).statistic,
            "top1": spearmanr([r["proxies"][k] for r in rows], top1).statistic,
        }
        for k in runs
    }
    return {
        "model": name,
        "options": len(rows),
        "proxies": list(runs),
        "long_batches": args.long,
        "teacher_val_top1": teacher_top1,
        "spearman": spearman,
        "minutes": round((time.time() - t0) / 60, 1),
        "rows": rows,
    }


def as_proxies(run: dict) -> dict:
    """A row of the first runs (``before`` and ``short``, ``short_ft`` fields) as the
    current ones (every proxy under ``proxies`` by its ``S/F`` key)."""
    if "proxies" in run:
        return run
    names = {"before": "before", "short": f"{run['short_batches']}/0"}
    if "short_finetune_batches" in run:
        names["short_ft"] = f"{run['short_batches']}/{run['short_finetune_batches']}"
    rows = [
        {"proxies": {v: o[k] for k, v in names.items()}}
        | {k: o[k] for k in ("option", "tuned", "tuned_top1")}
        for o in run["rows"]
    ]
    spearman = {
        v: {
            "tuned": run[f"spearman_{k}_tuned"],
            "top1": run[f"spearman_{k}_top1"],
        }
        for k, v in names.items()
    }
    return run | {"proxies": list(names.values()), "spearman": spearman, "rows": rows}


def write_md(data: dict) -> None:
    runs = [as_proxies(r) for r in data["rows"]]
    lines = [
        "# Option costs before tuning against after (issue #32 item 2)",
        "",
        "<!-- written by benchmarks/cost_proxy.py from cost_proxy.json: do not edit -->",
        "",
        "Each option applied alone to a trained Fashion-MNIST network at 64x64; its error at "
        "the output on 512 validation images before tuning (`before`, the selection's cost), "
        "and after each proxy `S/F`: S training batches per stage of layer-wise tuning, then F "
        "of the whole-network fine-tune (`select.cost_batches = N` is `N/N`); the reference "
        "(`tuned`) is the recipe's stage length and as many batches of fine-tune. Each proxy's "
        "Spearman rank correlation with the `tuned` error and with the validation top-1 after "
        "it (1: the same order).",
        "",
        "| network | options | proxy | vs tuned error | vs tuned top-1 | minutes | run |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        for k in r["proxies"]:
            sp = r["spearman"][k]
            lines.append(
                f"| {r['model']} | {r['options']} | {k} | {sp['tuned']:.2f} | {sp['top1']:.2f} "
                f"| {r['minutes']:.0f} | {r['date'][:10]}, {r['machine']['cpu']} |"
            )
    for r in runs:
        lines += [
            "",
            f"## {r['model']} (teacher val top-1 {100 * r['teacher_val_top1']:.2f}; `tuned`: "
            f"{r['long_batches']}/{r['long_batches']})",
            "",
            "| option | " + " | ".join(r["proxies"]) + " | tuned | val top-1 tuned |",
            "|---|" + "---:|" * (len(r["proxies"]) + 2),
        ]
        lines += [
            f"| {o['option']} | "
            + " | ".join(f"{o['proxies'][k]:.4f}" for k in r["proxies"])
            + f" | {o['tuned']:.4f} | {100 * o['tuned_top1']:.2f} |"
            for o in r["rows"]
        ]
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="bvlc_googlenet,mobilenet_v2")
    p.add_argument(
        "--proxies",
        type=parse_proxies,
        default="20/0,20/20,50/50",
        help="the proxies: batches per stage / of the fine-tune, comma-separated",
    )
    p.add_argument(
        "--long", type=int, default=200, help="batches per stage, and of the fine-tune, for `tuned`"
    )
    args = p.parse_args()
    run = provenance()  # of the code that runs: files edited meanwhile do not count
    for name in args.models.split(","):
        row = run_one(name, args) | run
        said = ", ".join(f"{k} {v['tuned']:.2f}" for k, v in row["spearman"].items())
        print(f"{name}: Spearman with the tuned error: {said}")
        write_md(record_row(RESULTS.with_suffix(".json"), row, ("model",)))


if __name__ == "__main__":
    main()
