"""Does an option's error before tuning rank options as tuning leaves them? (issue #32 item 2)

The latency-budget selection and the tuning budget's fit (``tune.fit_budget``) weigh each
option (a learned merge, a depth chain) by its error at the output with nothing tuned yet.
What an option costs in the end is its error after tuning. This measures, for every option of
a trained Fashion-MNIST network (64x64, the committed checkpoints of ``reproduce.py``):

- ``before``: the option applied alone to the exact-only model, its error at the output on
  512 validation images (the selection's measure, on more images);
- ``short``: the same after ``--short`` batches per stage of layer-wise tuning on train (the
  option's stages, each merged layer against the original at its block's output; a depth
  chain's activations dropped at once, as ``tune.linearize_batches = 0`` does);
- ``short_ft``: ``short`` followed by ``--short-finetune`` batches of the whole-network
  fine-tune (as the recipe ends: the stages are judged at their block, the fine-tune at the
  output);
- ``tuned``: the same after ``--long`` batches per stage (the default recipe's stage length)
  and ``--long`` batches of the whole-network fine-tune (distillation and labels, at the
  learning rate the network's committed recipe run chose: GoogLeNet 1e-3, MobileNetV2
  1e-4), and the validation top-1 after it. (Stages alone are no measure: they match each
  block's output and can leave the network's output worse, the fine-tune is what joins
  them.)

and the Spearman rank correlation of each proxy with ``tuned``: a proxy that
ranks like tuning is one the selection can trust. Train images tune, validation images judge;
the test split is not read. Writes benchmarks/results/cost_proxy.{json,md} with the command,
commit, date and machine (a run replaces its network's row).

    .venv/bin/python benchmarks/cost_proxy.py [--models bvlc_googlenet,mobilenet_v2]
        [--short 20] [--short-finetune 20] [--long 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from provenance import provenance, record_row
from scipy.stats import spearmanr

from deeprebirth.artifacts import open_model
from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import evaluate
from deeprebirth.files import atomic_write_text
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
    rows = []
    t0 = time.time()
    for i, o in enumerate(options):
        row = {"option": o.key}
        with tempfile.TemporaryDirectory() as tmp:
            for key, steps, finetune in (
                ("before", 0, 0),
                ("short", args.short, 0),
                ("short_ft", args.short, args.short_finetune),
                ("tuned", args.long, args.long),
            ):
                torch.manual_seed(0)
                row[key], tuned = tuned_error(
                    model, plan, o.entries, batches, train, steps, finetune, lr, Path(tmp) / key
                )
        row["tuned_top1"] = evaluate(tuned, get_loader(val, 256))["top1"]
        rows.append(row)
        print(
            f"{name} {i + 1}/{len(options)} {o.key}: before {row['before']:.4f}, "
            f"short {row['short']:.4f}, short+ft {row['short_ft']:.4f}, tuned {row['tuned']:.4f} "
            f"(val top-1 {100 * row['tuned_top1']:.2f})",
            flush=True,
        )
    errors = [r["tuned"] for r in rows]
    top1 = [-r["tuned_top1"] for r in rows]
    return {
        "model": name,
        "options": len(rows),
        "short_batches": args.short,
        "long_batches": args.long,
        "short_finetune_batches": args.short_finetune,
        "teacher_val_top1": teacher_top1,
        "spearman_before_tuned": spearmanr([r["before"] for r in rows], errors).statistic,
        "spearman_short_tuned": spearmanr([r["short"] for r in rows], errors).statistic,
        "spearman_before_top1": spearmanr([r["before"] for r in rows], top1).statistic,
        "spearman_short_top1": spearmanr([r["short"] for r in rows], top1).statistic,
        "spearman_short_ft_tuned": spearmanr([r["short_ft"] for r in rows], errors).statistic,
        "spearman_short_ft_top1": spearmanr([r["short_ft"] for r in rows], top1).statistic,
        "minutes": round((time.time() - t0) / 60, 1),
        "rows": rows,
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_md(data: dict) -> None:
    lines = [
        "# Option costs before tuning against after (issue #32 item 2)",
        "",
        "<!-- written by benchmarks/cost_proxy.py from cost_proxy.json: do not edit -->",
        "",
        "Each option applied alone to a trained Fashion-MNIST network at 64x64; its error at "
        "the output on 512 validation images before tuning (`before`, the selection's cost), "
        "after a few batches per stage of layer-wise tuning (`short`), after those and a few batches of "
        "whole-network fine-tune (`short+ft`; — where a run did not measure it), after the recipe's "
        "stage length and as many batches of whole-network fine-tune (`tuned`); the Spearman rank correlation of each proxy with `tuned` "
        "error and with the validation top-1 lost after it (1: the same order).",
        "",
        "| network | options | short / +ft / long batches | before vs tuned | short vs tuned "
        "| short+ft vs tuned | before vs top-1 | short vs top-1 | short+ft vs top-1 "
        "| minutes | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        ft = r.get("short_finetune_batches", "—")
        lines.append(
            f"| {r['model']} | {r['options']} | {r['short_batches']} / {ft} / "
            f"{r['long_batches']} | {r['spearman_before_tuned']:.2f} "
            f"| {r['spearman_short_tuned']:.2f} | {_num(r.get('spearman_short_ft_tuned'))} "
            f"| {r['spearman_before_top1']:.2f} | {r['spearman_short_top1']:.2f} "
            f"| {_num(r.get('spearman_short_ft_top1'))} "
            f"| {r['minutes']:.0f} | {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    for r in data["rows"]:
        lines += [
            "",
            f"## {r['model']} (teacher val top-1 {100 * r['teacher_val_top1']:.2f})",
            "",
            "| option | before | short | short+ft | tuned | val top-1 tuned |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {o['option']} | {o['before']:.4f} | {o['short']:.4f} "
            f"| {_num(o.get('short_ft'), 4)} | {o['tuned']:.4f} | {100 * o['tuned_top1']:.2f} |"
            for o in r["rows"]
        ]
    commands = sorted({f"`{r['command']}`" for r in data["rows"]})
    lines += ["", "Commands: " + ", ".join(commands), ""]
    atomic_write_text(RESULTS.with_suffix(".md"), "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="bvlc_googlenet,mobilenet_v2")
    p.add_argument("--short", type=int, default=20, help="batches per stage for `short`")
    p.add_argument(
        "--short-finetune",
        type=int,
        default=20,
        help="whole-network fine-tune batches after the short stages, for `short_ft`",
    )
    p.add_argument(
        "--long", type=int, default=200, help="batches per stage, and of the fine-tune, for `tuned`"
    )
    args = p.parse_args()
    for name in args.models.split(","):
        row = run_one(name, args) | provenance()
        print(
            f"{name}: Spearman before/tuned {row['spearman_before_tuned']:.2f}, "
            f"short/tuned {row['spearman_short_tuned']:.2f}"
        )
        write_md(record_row(RESULTS.with_suffix(".json"), row, ("model",)))


if __name__ == "__main__":
    main()
