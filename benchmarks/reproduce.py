"""Every committed Fashion-MNIST 64x64 number, one step at a time.

    .venv/bin/python benchmarks/reproduce.py STEP [STEP ...] [--device auto|cpu|cuda]
    .venv/bin/python benchmarks/reproduce.py all        # every step, in order

Steps, in order (each resumable: run the same command again after an interruption; a
finished step is skipped unless --force):

  teacher               BVLC GoogLeNet, 1 channel, 64x64, trained until validation top-1
                        stops improving (benchmarks/train_classifier.py)
  squeezenet1_1         the references: trained with the teacher's recipe, same input (1
  mobilenet_v2          channel, 64x64), then distilled from the teacher for as many epochs
                        of extra training as the students get (EXTRA_EPOCHS)
  slimmed               the students: `deeprebirth run recipes/fashion_mnist_64/STEP.toml`
                        on the teacher: layer-wise stages, then the fine-tune (the default
                        recipe; benchmarks/tune_ablation.py chose it on val)
  slimmed_all_at_once   the same budget, all merged layers trained in one stage
  slimmed_from_scratch  layer-wise, the merged layers re-initialised (the paper's other arm)
  slimmed_depth         the slimmed recipe with the depth chains the plan enables on top
                        (plan.drop_activations): as fast or faster at the same accuracy?
  slimmed_depth_3a      the same with the chain the plan picks at 224 instead (conv2_reduce,
                        conv2 and inception 3a's fused heads; the stem keeps its ReLU)
  slimmed_tucker        Tucker-2 on the slimmed model, tuned against it (the paper's order)
  googlenet_at_squeezenet_speed
                        the paper's comparison at equal speed: the teacher with every
                        merge, depth chain and Tucker-2 rank as options, selected for
                        SqueezeNet 1.1's ORT latency (out of reach: the fastest plan they
                        make), tuned with the default recipe, its stages sharing the
                        slimmed student's stage batches
  slimmed_tucker_int8   int8 of each float model (ONNX Runtime static quantization,
  squeezenet1_1_int8    calibrated on training images; the calibration method and the layers
                        kept float chosen on the 5,000 validation images)
  mobilenet_v2_int8
  googlenet_at_squeezenet_speed_int8
  mobilenet_v2_depth    depth compression of the MobileNetV2 reference: activations dropped
                        and the convs around them merged (the chains chosen to reach 0.75 of
                        its ORT latency), tuned by the default recipe with a budget
  mobilenet_v2_depth_stagewise
                        the same chains (this step chose them), tuned layer-wise against it
                        with the students' first budget
  mobilenet_v2_depth_lr_1e-3
                        the default recipe before the fine-tune chose its learning rate on
                        val (1e-3, GoogLeNet's)
  mobilenet_v2_depth_int8
  mobilenet_v2_depth_linearized
                        the same chains, tuned by gradual linearization instead: the
                        activations fade out while the unmerged network is distilled, merged
                        after (the same number of training batches)
  mobilenet_v2_depth_linearized_int8
  mobilenet_v2_depth_long
                        the linearized one with five passes of fine-tune instead of one
                        (7,160 training batches against 3,720): budget or capacity?
  mobilenet_v2_depth_augmented
                        the long one tuned on flipped and shifted images, ten passes of
                        fine-tune (11,460 batches)
  mobilenet_v2_depth_ended
                        the long one with each merged chain ending in a ReLU6
                        (plan.end_activation): the same chains and budget
  mobilenet_v2_depth_ended_more
                        the ended one, five more passes of fine-tune from its tuned weights
                        (tune.start_from; 11,460 batches in all)
  mobilenet_v2_depth_more
                        mobilenet_v2_depth continued (tune.start_from): four more passes
                        of the default fine-tune; its cost counts both sittings
  speed                 ONNX Runtime, ExecuTorch (XNNPACK) and PyTorch eager medians of every
                        model at 64 and at 224 (random inputs; the same architectures), side
                        by side in one run, 1 thread; int8 is ORT's static quantization in
                        ORT and the XNNPACK quantizer's program in ExecuTorch
  table                 the paper's table, the accuracy-latency plot with its Pareto front,
                        and the README's results section, all from the results file

Each model step writes its weights under benchmarks/weights/fashion_mnist_64/ and its entry
in benchmarks/results/fashion_mnist_64.json: path, input size and channels, top-1 on the
validation split (what every choice is made on) and on the test split (read once, for the
finished model), minutes, the command, the git commit, the date and the machine. The file
is only ever written by this script.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git, git_commit  # noqa: E402
from train_classifier import TrainRecipe, train_classifier  # noqa: E402

from deeprebirth import get_model  # noqa: E402
from deeprebirth.data import get_dataset, get_loader  # noqa: E402
from deeprebirth.evaluation import evaluate, load_model_file, save_weights  # noqa: E402
from deeprebirth.files import atomic_write_text, write_json  # noqa: E402
from deeprebirth.machine import machine_info  # noqa: E402
from deeprebirth.recipe import Recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/fashion_mnist_64.json"
TABLE = ROOT / "benchmarks/results/fashion_mnist_64.md"
PLOT = ROOT / "benchmarks/results/fashion_mnist_64_accuracy_latency.png"
README = ROOT / "README.md"
WEIGHTS = Path("benchmarks/weights/fashion_mnist_64")
TEACHER = WEIGHTS / "teacher.safetensors"
SIZE, CHANS, DATA = 64, 1, "fashion-mnist"
SPEED_SIZES = (64, 224)

# The students are the committed recipes: recipes/fashion_mnist_64/STEP.toml, run by
# `deeprebirth run`. Their budget is in passes over the data rather than minutes
# (machine-free): every stage sees tune.max_batches batches of 64, then the whole network is
# fine-tuned with labels for tune.finetune_epochs passes. All at once, and the Tucker stages,
# get the layer-wise stages' batches in all (set here, since it depends on the plan).
RECIPES = ROOT / "recipes/fashion_mnist_64"


def student_recipe(key: str) -> Recipe:
    return Recipe.load(RECIPES / f"{key}.toml")


def train_recipe(**changes) -> TrainRecipe:
    """The teacher's and the references' training recipe: recipes/fashion_mnist_64/train.toml."""
    from deeprebirth.config import from_dict, read_toml

    recipe = from_dict(TrainRecipe, read_toml(RECIPES / "train.toml")["train"])
    return dataclasses.replace(recipe, **changes)


STAGE_BATCHES = student_recipe("slimmed").tune.max_batches
BATCH = student_recipe("slimmed").data.batch_size
FINETUNE_EPOCHS = student_recipe("slimmed").tune.finetune_epochs
REFERENCES = ("squeezenet1_1", "mobilenet_v2")
CALIBRATION_IMAGES = 512
CHOICE_IMAGES = 5000  # validation images int8's settings are chosen on: the whole split


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"models": {}}


def started(work: Path, fresh: bool = False) -> dict:
    """The provenance of a resumable step: the commit and command of each session that ran
    it (the first one made the run; later ones resumed it). ``fresh`` (a --force run)
    starts a new history: the sessions of a run it replaces did not make this one."""
    path = work / "provenance.json"
    runs = json.loads(path.read_text()) if path.is_file() and not fresh else []
    runs.append({"commit": git_commit(), "command": " ".join(["python", *sys.argv])})
    write_json(path, runs)
    return {"commit": runs[0]["commit"], "resumed_at": [r["commit"] for r in runs[1:]]}


def record(key: str, entry: dict, provenance: dict | None = None) -> None:
    """Merge one entry into the results file, with its provenance."""
    results = load_results()
    info = machine_info()
    full = {
        **entry,
        "command": " ".join(["python", *sys.argv]),
        **(provenance or {"commit": git_commit(), "resumed_at": []}),
        "date": info.pop("date"),
        "machine": info,
    }
    if key == "speed":
        results["speed"] = full
    else:
        results["models"][key] = full
    write_json(RESULTS, results)


def files_of(key: str) -> list[str]:
    """The files in benchmarks/weights of the entry ``key`` (a directory or one file)."""
    candidates = (WEIGHTS / key, WEIGHTS / f"{key}.safetensors", WEIGHTS / f"{key}.onnx")
    return [str(p) for p in candidates if p.exists()]


def drop_files(keys: list[str]) -> None:
    """Delete the entries' files from the work tree, keeping their numbers: each entry names
    the commit that holds its files (commit the deletion after). Only committed files."""
    results = load_results()
    head = git("rev-parse", "HEAD")
    for key in keys:
        if key not in results["models"]:
            sys.exit(f"reproduce.py: no entry {key}")
        files = files_of(key)
        if not files:
            sys.exit(f"reproduce.py: {key} has no files in {WEIGHTS}")
        if git("status", "--porcelain", "--", *files):
            sys.exit(f"reproduce.py: {key}'s files have uncommitted changes; commit them first")
    for key in keys:
        for f in map(Path, files_of(key)):
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
        results["models"][key]["files_at_commit"] = head
        print(f"{key}: files deleted; they are at {head[:10]}")
    write_json(RESULTS, results)


def keep(key: str, new_key: str) -> None:
    """Move the entry ``key`` to ``new_key`` before a new run replaces its files: its numbers
    stay, and it names the commit that holds its files (None when they were never
    committed: the numbers are kept, the files are not)."""
    results = load_results()
    if new_key in results["models"]:
        sys.exit(f"reproduce.py: {new_key} has an entry already")
    entry = results["models"].pop(key)
    files = files_of(key)
    if "files_at_commit" in entry:  # its files left the tree before: that commit holds them
        commit = entry["files_at_commit"]
    else:
        committed = bool(files) and not git("status", "--porcelain", "--", *files)
        commit = git("rev-parse", "HEAD") if committed else None
    results["models"][new_key] = {**entry, "files_at_commit": commit}
    if (RECIPES / f"{new_key}.toml").is_file():  # its recipe, kept under the new key too
        results["models"][new_key]["recipe"] = str((RECIPES / f"{new_key}.toml").relative_to(ROOT))
    write_json(RESULTS, results)
    where = f"files at {commit[:10]}" if commit else "its files were never committed: not kept"
    print(f"{key}: its entry is kept as {new_key} ({where})")


def loader(split: str, size: int = SIZE, in_chans: int = CHANS, batch: int = 256):
    return get_loader(get_dataset(DATA, split, input_size=size, in_chans=in_chans), batch)


def top1(model: torch.nn.Module, split: str) -> float:
    return 100 * evaluate(model, loader(split))["top1"]


def accuracy(model: torch.nn.Module) -> dict:
    """Validation top-1, then the test split: read once, for the finished model."""
    return {"top1_val": top1(model, "val"), "top1_test": top1(model, "test")}


def describe(path: Path, model_name: str) -> dict:
    return {"path": str(path), "model": model_name, "input_size": SIZE, "in_chans": CHANS}


# --- steps ------------------------------------------------------------------------------


def step_teacher(args) -> None:
    classifier("teacher", "bvlc_googlenet", args)


def classifier(key: str, model_name: str, args) -> None:
    """Train (and, for a reference, then distill from the teacher); save fp16; evaluate
    what is saved."""
    recipe = train_recipe()
    work = Path(args.work) / key
    provenance = started(work, fresh=args.force)
    model = get_model(model_name, num_classes=10, in_chans=CHANS)
    run = train_classifier(model, recipe, work, device=args.device)
    entry = {"epochs": run["epochs"], "best_epoch": run["best_epoch"], "history": run["history"]}
    minutes = run["minutes"]
    if key != "teacher":
        teacher, _, _ = load_model_file(ROOT / TEACHER)
        extra = train_recipe(distill_epochs=extra_epochs())
        distilled = train_classifier(
            model, extra, work / "distill", device=args.device, teacher=teacher
        )
        entry["trained_top1_val"] = run["top1_val"]
        entry["distill_epochs"] = distilled["epochs"]
        entry["distill_history"] = distilled["history"]
        minutes += distilled["minutes"]
    path = WEIGHTS / f"{key}.safetensors"
    meta = {"model": model_name, "num_classes": 10, "in_chans": CHANS, "input_size": SIZE}
    save_weights(model, ROOT / path, meta)
    saved, _, _ = load_model_file(ROOT / path)  # what is committed: the fp16 file
    entry = {
        **describe(path, model_name),
        **accuracy(saved),
        "minutes": minutes,
        "recipe": "recipes/fashion_mnist_64/train.toml",
        **entry,
    }
    record(key, entry, provenance)


def stage_count(base: torch.nn.Module | None = None, **plan_options) -> int:
    """How many layer-wise stages slimming ``base`` (default: the teacher's architecture)
    makes; all at once gets their batches in its one stage."""
    from deeprebirth.graph import capture
    from deeprebirth.slimming import slim
    from deeprebirth.tuning import find_stages

    if base is None:
        base = get_model("bvlc_googlenet", num_classes=10, in_chans=CHANS)
    result = slim(base, input_size=SIZE, in_chans=CHANS, **plan_options)
    example = torch.zeros(1, CHANS, SIZE, SIZE)
    applied = result.report.applied
    return len(find_stages(result.plan, applied, capture(base), result.model, example))


def extra_epochs() -> int:
    """The students' extra training as whole passes over the training split: the stages'
    images plus the fine-tune's passes, rounded up (what the references are given)."""
    train_images = len(get_dataset(DATA, "train", input_size=SIZE, in_chans=CHANS))
    return math.ceil(stage_count() * STAGE_BATCHES * BATCH / train_images) + FINETUNE_EPOCHS


def student(key: str, args, overrides: tuple[str, ...] = ()) -> None:
    """`deeprebirth run` on the student's committed recipe; evaluate what it saved."""
    from deeprebirth.slimming import load

    recipe = RECIPES.relative_to(ROOT) / f"{key}.toml"
    out = Path(student_recipe(key).out)
    provenance = started(Path(args.work) / key, fresh=args.force)
    sets = [f"tune.device={args.device}", *overrides]
    command = [sys.executable, "-m", "deeprebirth", "run", str(recipe)]
    command += [a for s in sets for a in ("--set", s)]
    print("$", " ".join(command[2:]), flush=True)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    report = json.loads((ROOT / out / "tune_report.json").read_text())
    stages = report["tuning"]["stages"]
    entry = {
        **describe(out, "slimmed directory"),
        **accuracy(load(ROOT / out)),
        "minutes": sum(r["seconds"] for r in stages) / 60,
        "wall_minutes_this_session": (time.time() - start) / 60,
        "recipe": str(recipe),
        "overrides": sets,
        "stages": len(stages) - 1,
    }
    entry["cost"] = tuning_cost(report["tuning"], str(recipe))
    if "start_from" in report["tuning"]:  # continued from another student's tuned weights
        entry["start_from"] = report["tuning"]["start_from"]
    if (ROOT / out / "selection.json").is_file():  # chosen under a latency budget
        sel = json.loads((ROOT / out / "selection.json").read_text())
        entry["selection"] = {
            "chosen": sel["chosen"],
            "budget_ms": sel["budget_ms"],
            **{k: sel["extra"].get(k) for k in ("original_ms", "measured_ms", "share")},
        }
    record(key, entry, provenance)


def tuning_cost(tuning: dict, recipe: str) -> dict:
    """A student's tuning in passes over the training split (machine-free) and minutes, and
    as a share of the training of the model its ``recipe`` slims (its passes; its minutes
    were measured on another machine, so the passes are the comparison that holds)."""
    from fashion_mnist_table import share_of_training

    from deeprebirth.tuning.trainer import tuning_cost as cost_of

    train_images = len(get_dataset(DATA, "train", input_size=SIZE, in_chans=CHANS))
    cost = tuning.get("cost") or cost_of(tuning["stages"], BATCH, train_images)
    share = share_of_training(load_results(), {"recipe": recipe}, cost["passes"])
    if share is None:
        return cost
    return {**cost, "trained_from": share[0], "share_of_training_passes": round(share[1], 3)}


def recost(results: dict) -> bool:
    """Each student's tuning cost as a share of the training of the model it was slimmed
    from (derived from the passes recorded): older entries divided every student's passes
    by the teacher's. Returns whether any entry changed."""
    from fashion_mnist_table import share_of_training

    changed = False
    for entry in results["models"].values():
        cost = entry.get("cost")
        if not cost:
            continue
        share = share_of_training(results, entry, cost["passes"])
        new = {k: v for k, v in cost.items() if k != "share_of_teacher_passes"}
        if share is not None:
            new |= {"trained_from": share[0], "share_of_training_passes": round(share[1], 3)}
        changed |= new != cost
        entry["cost"] = new
    return changed


def step_slimmed(args) -> None:
    student("slimmed", args)


def step_slimmed_depth(args) -> None:
    student("slimmed_depth", args)


def step_slimmed_depth_3a(args) -> None:
    student("slimmed_depth_3a", args)


def step_slimmed_all_at_once(args) -> None:
    """One stage with every layer-wise stage's batches: as many passes over the data as
    those batches need (a stage stops at tune.epochs_per_stage passes)."""
    batches = stage_count() * STAGE_BATCHES
    train_images = len(get_dataset(DATA, "train", input_size=SIZE, in_chans=CHANS))
    passes = math.ceil(batches * BATCH / train_images)
    sets = (f"tune.max_batches={batches}", f"tune.epochs_per_stage={passes}")
    student("slimmed_all_at_once", args, sets)


def step_slimmed_from_scratch(args) -> None:
    student("slimmed_from_scratch", args)


def step_slimmed_tucker(args) -> None:
    """Tucker makes a stage per decomposed conv: they share the merges' stage batches."""
    from deeprebirth.slimming import load

    plan = student_recipe("slimmed_tucker").plan
    base = load(ROOT / student_recipe("slimmed").out)
    tucker = stage_count(base, tucker=True, pointwise_rank_ratio=plan.pointwise_rank_ratio)
    batches = max(1, stage_count() * STAGE_BATCHES // tucker)
    student("slimmed_tucker", args, (f"tune.max_batches={batches}",))


def step_googlenet_at_squeezenet_speed(args) -> None:
    """The paper's comparison at equal speed: the selection first (SqueezeNet 1.1's ORT
    latency as the budget, every option; out of reach, the fastest plan), kept where the run
    resumes it; its layer-wise stages then share the slimmed student's stage batches, as the
    Tucker stages do (it has a stage per decomposed conv)."""
    from deeprebirth.graph import capture
    from deeprebirth.pipeline import Hooks, load_model, selection_for
    from deeprebirth.slimming import slim
    from deeprebirth.tuning import find_stages

    key = "googlenet_at_squeezenet_speed"
    recipe = student_recipe(key)
    model, spec = load_model(recipe.model, "reproduce.py")
    recipe = recipe.replace(model=spec)
    hooks = Hooks(log=lambda msg: print(msg, flush=True), note=lambda msg: print(msg, flush=True))
    plan = selection_for(recipe, model, spec, ROOT / recipe.out, hooks).plan
    result = slim(model, plan, input_size=SIZE, in_chans=CHANS)
    example = torch.zeros(1, CHANS, SIZE, SIZE)
    stages = find_stages(result.plan, result.report.applied, capture(model), result.model, example)
    # linearized chains are tuned in the linearization: no stage of theirs
    chains = {e.id for e in result.plan.entries if e.kind == "drop_activation"}
    n = sum(not set(s.id.split("+")) <= chains for s in stages)
    batches = max(1, stage_count() * STAGE_BATCHES // max(1, n))
    print(f"{n} layer-wise stages: {batches} batches each", flush=True)
    student(key, args, (f"tune.max_batches={batches}",))


#: The students whose committed recipe is the whole step.
RECIPE_STUDENTS = (
    "mobilenet_v2_depth",
    "mobilenet_v2_depth_stagewise",
    "mobilenet_v2_depth_lr_1e-3",
    "mobilenet_v2_depth_linearized",
    "mobilenet_v2_depth_long",
    "mobilenet_v2_depth_augmented",
    "mobilenet_v2_depth_ended",
    "mobilenet_v2_depth_ended_more",
    "mobilenet_v2_depth_more",
)


def float_model(key: str):
    """A committed float model, by its results key."""
    from deeprebirth.artifacts import TORCH_KINDS, open_model

    path = ROOT / load_results()["models"][key]["path"]
    return open_model(str(path), TORCH_KINDS, "reproduce.py").model


def int8(key: str, args) -> None:
    """int8 of a committed float model: calibrated on training images, checked on val."""
    from deeprebirth.export import DEFAULT_INT8_FORMAT, OnnxModel, export_int8

    calibration = [x for x, _ in islice(loader("train", batch=64), CALIBRATION_IMAGES // 64)]
    check = next(iter(loader("val", batch=64)))[0]
    # the calibration method is chosen on validation images (the tool's default)
    choose_on = list(islice(loader("val", batch=64), math.ceil(CHOICE_IMAGES / 64)))
    path = WEIGHTS / f"{key}_int8.onnx"
    start = time.time()
    report = export_int8(
        float_model(key),
        ROOT / path,
        check,
        calibration,
        DEFAULT_INT8_FORMAT,
        calibration_method="auto",
        choose_on=choose_on,
    )
    minutes = (time.time() - start) / 60
    entry = {
        **describe(path, f"int8 of {key}"),
        **accuracy(OnnxModel(ROOT / path)),
        "minutes": minutes,
        "int8": DEFAULT_INT8_FORMAT,
        "calibration_images": CALIBRATION_IMAGES,
        "from": key,
        "check_on_val": {k: report[k] for k in ("relative_error", "top1_agreement")},
        **{
            k: report[k]
            for k in ("calibration_method", "reduce_range", "int8_choice", "smoothed_pairs")
        },
        "executorch": executorch_int8(key, calibration, choose_on, check),
    }
    record(f"{key}_int8", entry)


def executorch_int8(key: str, calibration: list, choose_on: list, check) -> dict:
    """The ExecuTorch (XNNPACK) int8 program of the same float model, chosen the same way (its
    observer and the layers kept float, on the same validation images); its top-1. The
    program is not kept: the speed step lowers its own, with every layer int8."""
    import tempfile

    from deeprebirth.export import PteModel, export_executorch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.pte"
        r = export_executorch(float_model(key), path, check, calibration, choose_on=choose_on)
        return {
            **accuracy(PteModel(path)),
            "smoothed_pairs": r["smoothed_pairs"],
            "int8_choice": r["int8_choice"],
            "relative_error": r["relative_error"],
        }


def at_size(key: str, size: int, built: dict):
    """The model of ``key`` at ``size``: committed weights at 64; at 224 the same
    architecture (slimmed models re-planned at 224 from the teacher, Tucker at the committed
    model's ranks; int8 re-quantized), for speed only."""
    from deeprebirth.export import DEFAULT_INT8_FORMAT, OnnxModel, export_int8
    from deeprebirth.plan import Plan
    from deeprebirth.slimming import slim

    entry = load_results()["models"][key]
    if size == SIZE:
        return OnnxModel(ROOT / entry["path"]) if key.endswith("_int8") else float_model(key)
    if key.endswith("_int8"):
        path = Path(built["_tmp"]) / f"{key}_{size}.onnx"
        check = next(iter(loader("val", size, batch=8)))[0]
        calibration = [x for x, _ in islice(loader("train", size, batch=32), 4)]
        export_int8(built[entry["from"]], path, check, calibration, DEFAULT_INT8_FORMAT)
        return OnnxModel(path)
    if key in ("teacher", *REFERENCES):
        return float_model(key)  # global pooling: the same weights run at any size
    if key.startswith("mobilenet_v2_depth"):  # the committed chains, merged at this size
        committed = Plan.load(ROOT / entry["path"] / "plan.json")
        entries = [copy.copy(e) for e in committed.entries]
        plan = Plan(committed.model, [1, CHANS, size, size], entries, committed.model_config)
        return slim(built["mobilenet_v2"], plan).model
    teacher = built["teacher"]
    if key.startswith("slimmed_depth"):
        # GoogLeNet's streamline merges record their 64x64 shapes: re-plan at this size and
        # apply exactly the merges the committed model has (the same architecture).
        from deeprebirth.graph.capture import example_input
        from deeprebirth.planning import make_plan

        applied = set(json.loads((ROOT / entry["path"] / "plan.json").read_text())["applied"])
        plan = make_plan(teacher, example_input(1, CHANS, size), drop_activations=True)
        for e in plan.entries:
            e.enabled = e.id in applied
        missing = applied - {e.id for e in plan.entries}
        if missing:
            raise SystemExit(f"{key}: the plan at {size} has no {', '.join(sorted(missing))}")
        result = slim(teacher, plan)
        if set(result.report.applied) != applied:
            raise SystemExit(f"{key}: at {size} the committed merges do not all apply")
        return result.model
    if key.startswith("slimmed") and "tucker" not in key:
        return slim(teacher, name="bvlc_googlenet", input_size=size, in_chans=CHANS).model
    committed = Plan.load(ROOT / entry["path"] / "plan.json")
    tucker = [copy.copy(e) for e in committed.enabled() if e.kind == "tucker"]
    plan = Plan(model=committed.model, input_shape=[1, CHANS, size, size], entries=tucker)
    return slim(built["slimmed"], plan).model


def et_model(key: str, model, size: int, built: dict):
    """What ExecuTorch runs for ``key``: a float model as it is (lowered to XNNPACK when
    timed); an int8 one as the XNNPACK quantizer's program of its float twin, calibrated on
    training images (int8 against int8 in each runtime)."""
    from deeprebirth.export import OnnxModel, PteModel
    from deeprebirth.export.check import export_executorch

    if not isinstance(model, OnnxModel):
        return model
    twin = built[load_results()["models"][key]["from"]]
    path = Path(built["_tmp"]) / f"{key}_{size}.pte"
    check = next(iter(loader("val", size, batch=8)))[0]
    calibration = [x for x, _ in islice(loader("train", size, batch=32), 4)]
    export_executorch(twin, path, check, calibration)
    return PteModel(path)


def step_speed(args) -> None:
    """Every committed model side by side at each size: ORT and ExecuTorch for all, eager
    for float ones."""
    import tempfile

    from deeprebirth.export import OnnxModel
    from deeprebirth.graph import capture
    from deeprebirth.graph.capture import example_input
    from deeprebirth.profiling.bench import latencies
    from deeprebirth.profiling.stats import count_macs, count_params, peak_activation_bytes

    # entries whose files are in an earlier commit (replaced or dropped) are not timed
    keys = [k for k, e in load_results()["models"].items() if "files_at_commit" not in e]
    # each beside the teacher alone: interleaved all at once, every model would run with its
    # weights evicted by the others' (docs/results.md, "Timing many models side by side")
    beside = "teacher"
    speed = {
        "runs": args.runs,
        "sessions": args.sessions,
        "threads": 1,
        "beside": beside,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for size in SPEED_SIZES:
            print(f"--- {size}x{size}", flush=True)
            built: dict = {"_tmp": tmp}
            for key in sorted(keys, key=lambda k: k.endswith("_int8")):  # floats first
                built[key] = at_size(key, size, built)
            models = {k: built[k] for k in keys}
            x = example_input(1, CHANS, size)
            eager = {k: (m, x) for k, m in models.items() if not isinstance(m, OnnxModel)}
            t_torch = latencies(
                eager, runtimes=["torch"], runs=args.runs, beside=beside, log=print
            )["torch"]
            every = {"runs": args.runs, "sessions": args.sessions, "beside": beside, "log": print}
            t_ort = latencies({k: (m, x) for k, m in models.items()}, runtimes=["ort"], **every)[
                "ort"
            ]
            phone = {k: (et_model(k, m, size, built), x) for k, m in models.items()}
            t_et = latencies(phone, runtimes=["executorch"], **every)["executorch"]
            rows = {}
            for key, m in models.items():
                row = {"ort_ms": t_ort[key].median_ms, "executorch_ms": t_et[key].median_ms}
                if key in t_torch:
                    row["torch_ms"] = t_torch[key].median_ms
                    row["macs"] = count_macs(m, x)
                    row["params"] = count_params(m)
                    row["peak_activation_mb"] = peak_activation_bytes(capture(m), x) / 2**20
                rows[key] = row
            speed["sizes"][str(size)] = rows
    record("speed", speed)


def step_table(args) -> None:
    from fashion_mnist_table import paper_table, plot_pareto, readme_section, update_readme

    results = load_results()
    if recost(results):
        write_json(RESULTS, results)
    atomic_write_text(TABLE, paper_table(results))
    plot_pareto(results, PLOT)
    update_readme(README, readme_section(results))
    print(f"wrote {TABLE.relative_to(ROOT)}, {PLOT.relative_to(ROOT)} and README's results")


STEPS = {
    "teacher": step_teacher,
    **{ref: (lambda args, r=ref: classifier(r, r, args)) for ref in REFERENCES},
    "slimmed": step_slimmed,
    "slimmed_all_at_once": step_slimmed_all_at_once,
    "slimmed_from_scratch": step_slimmed_from_scratch,
    "slimmed_depth": step_slimmed_depth,
    "slimmed_depth_3a": step_slimmed_depth_3a,
    "slimmed_tucker": step_slimmed_tucker,
    "googlenet_at_squeezenet_speed": step_googlenet_at_squeezenet_speed,
    **{key: (lambda args, k=key: student(k, args)) for key in RECIPE_STUDENTS},
    **{
        f"{k}_int8": (lambda args, k=k: int8(k, args))
        for k in (
            "slimmed_tucker",
            "googlenet_at_squeezenet_speed",
            *REFERENCES,
            "mobilenet_v2_depth",
            "mobilenet_v2_depth_linearized",
            "mobilenet_v2_depth_more",
        )
    },
    "speed": step_speed,
    "table": step_table,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("steps", nargs="*", metavar="STEP", help=f"{', '.join(STEPS)} or all")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    p.add_argument("--work", default="runs/fashion_mnist_64", help="resumable state of each step")
    p.add_argument("--runs", type=int, default=15, help="timed runs per session (speed)")
    p.add_argument(
        "--sessions", type=int, default=3, help="ORT/ExecuTorch sessions per model (speed)"
    )
    p.add_argument("--force", action="store_true", help="run steps whose entry exists already")
    p.add_argument(
        "--keep-as",
        metavar="KEY",
        help="with --force and one model step: keep the step's current entry under KEY, "
        "naming the commit that holds its files (the new run replaces them)",
    )
    p.add_argument(
        "--drop-files",
        metavar="KEY,...",
        help="delete these entries' files from benchmarks/weights (their numbers stay and "
        "name the commit that holds the files); commit the deletion after",
    )
    args = p.parse_args()
    if args.drop_files:
        drop_files(args.drop_files.split(","))
        if not args.steps:
            return
    if not args.steps:
        p.error("name a step (or all), or --drop-files")
    unknown = [s for s in args.steps if s not in (*STEPS, "all")]
    if unknown:
        p.error(f"unknown step {unknown[0]!r}; steps: {', '.join(STEPS)}, all")
    if args.keep_as:
        if not args.force or len(args.steps) != 1 or args.steps[0] not in load_results()["models"]:
            p.error("--keep-as needs --force and one model step that has an entry")
        keep(args.steps[0], args.keep_as)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    os.chdir(ROOT)
    steps = list(STEPS) if "all" in args.steps else args.steps
    for step in steps:
        done = step in load_results()["models"] or (step == "speed" and "speed" in load_results())
        if done and not args.force and step != "table":
            print(f"{step}: done (in {RESULTS.relative_to(ROOT)}); --force runs it again")
            continue
        print(f"=== {step}", flush=True)
        STEPS[step](args)


if __name__ == "__main__":
    main()
