"""The pipeline: one recipe, run end to end.

    profile -> plan -> (select) -> slim -> tune -> evaluate -> export -> report

:func:`run` is what ``deeprebirth run RECIPE.toml``, ``deeprebirth slim``, ``make demo`` and
the benchmark scripts all call. It prints nothing: it reports through :class:`Hooks`
(progress lines, notes, and results to show), which the command line fills with printing.
Everything it makes goes into ``recipe.out``, beside the resolved recipe
(``recipe.toml``). Interrupted tuning continues with ``tune.resume = true``.

Example:
    >>> from deeprebirth.pipeline import run
    >>> from deeprebirth.recipe import Recipe
    >>> result = run(Recipe.load("recipes/demo.toml"))  # doctest: +SKIP
    >>> result.out_dir / "report.md"  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import TORCH_KINDS, open_model, zoo_config
from .config import ConfigError
from .data import FASHION_MNIST, fashion_mnist_root, get_dataset, get_loader, num_classes_of
from .errors import DataNotFoundError, DeepRebirthError
from .evaluation import evaluate
from .export import export, export_executorch, export_int8
from .export.executorch import require_executorch
from .files import write_json
from .graph import example_input
from .plan import Plan, PlanEntry, PlanError
from .planning import make_plan
from .planning.recoverable import keep_recoverable, trimmable
from .planning.select import (
    SESSIONS,
    error_images,
    reconstruction_error,
    select_plan,
    tucker_plans,
    with_entries,
)
from .profiling import plot_profile, profile
from .profiling.bench import latencies
from .recipe import RECIPE_FILE, ModelConfig, Recipe
from .report import REFERENCES, build_report, reference_model, write_report
from .report.hooks import Hooks
from .slimming import save, slim, start_from, tune
from .transforms import apply_plan
from .transforms.depth import end_in_activation
from .tuning import distributed
from .tuning.budget import budget_share, step_seconds
from .tuning.trainer import config_dict, cut_short, tuning_cost

#: What each export format writes into the output directory.
EXPORT_FILES = {"onnx": "model.onnx", "executorch": "model.pte", "torchscript": "model.pt"}
SELECTION_FILE = "selection.json"
#: The plan fitted to the tuning budget, kept in OUT.partial/ while tuning may be resumed.
BUDGET_FILE = "budget_plan.json"
INT8_FILES = {"onnx": "model_int8.onnx", "executorch": "model_int8.pte"}


@dataclass
class RunResult:
    out_dir: Path
    recipe: Recipe
    plan: Any = None
    report: Any = None
    summary: dict = field(default_factory=dict)
    selection: Any = None


# --- the model -------------------------------------------------------------------------


def load_model(spec: ModelConfig, purpose: str) -> tuple[nn.Module, ModelConfig]:
    """The PyTorch model ``spec`` names (a zoo name, a weights file or a slimmed
    directory: :func:`deeprebirth.artifacts.open_model`) and ``spec`` resolved; ``purpose``
    (the command) names what refuses any other kind."""
    artifact = open_model(spec, TORCH_KINDS, purpose)
    return artifact.model, artifact.spec


def plan_for(recipe: Recipe, model: nn.Module, spec: ModelConfig, log=lambda msg: None):
    """Every merge the recipe's ``[plan]`` asks for, found in ``model``."""
    example = example_input(1, spec.in_chans, spec.input_size)
    config = zoo_config(spec)
    return make_plan(model, example, recipe.plan, name=spec.name, model_config=config, log=log)


def _load_plan_file(recipe: Recipe):
    """The plan in ``plan.file`` (its depth chains ending in an activation or not, as
    ``plan.end_activation`` says), and the model spec completed from it."""

    plan = Plan.load(recipe.plan.file)
    end_in_activation(plan.entries, recipe.plan.end_activation)
    spec = recipe.model
    if plan.model != spec.name:
        raise PlanError(f"{recipe.plan.file} is a plan for {plan.model}, not {spec.name}")
    filled = {k: v for k, v in plan.model_config.items() if getattr(spec, k, None) is None}
    if spec.input_size is None:
        filled["input_size"] = plan.input_shape[2]
    return plan, dataclasses.replace(spec, **filled)


# --- checks before any work ------------------------------------------------------------


def report_runtimes() -> list[str]:
    """The report's runtimes: PyTorch eager, ONNX Runtime, and ExecuTorch if installed."""
    return ["torch", "ort"] + (["executorch"] if importlib.util.find_spec("executorch") else [])


def references_of(recipe: Recipe) -> list[str]:

    if not recipe.report.enabled:
        return []
    refs = recipe.report.references
    return list(REFERENCES) if refs is None else [r for r in refs if r]


def check(recipe: Recipe) -> None:
    """What can be checked before any work, so a typo costs nothing: the references load,
    ExecuTorch is installed where asked for."""

    for ref in references_of(recipe):
        reference_model(ref, num_classes=10)
    wants_et = "executorch" in recipe.export.formats or (
        recipe.profile.enabled and "executorch" in recipe.profile.runtimes
    )
    wants_et |= recipe.report.enabled and "executorch" in (recipe.report.runtimes or [])
    if wants_et:
        require_executorch()
    profile = recipe.profile
    if profile.enabled and "executorch" in profile.runtimes and profile.batch != 1:
        raise ConfigError("profile.batch must be 1: ExecuTorch programs run batch 1")


# --- the steps ---------------------------------------------------------------------------


def profile_step(recipe: Recipe, model: nn.Module, spec: ModelConfig, hooks, command: str) -> dict:
    """Where the model's time goes, per layer and layer kind, in each of ``profile.runtimes``
    (``deeprebirth profile``; :func:`run` writes it beside the slimmed model)."""

    p = recipe.profile
    result = profile(
        model,
        name=spec.name,
        runtimes=p.runtimes,
        threads=p.threads,
        batch=p.batch,
        input_size=spec.input_size,
        in_chans=spec.in_chans,
        runs=p.runs,
        log=hooks.log,
    )
    result["command"] = command
    hooks.show("profile", (result, p.top))
    return result


def validation_batches(recipe: Recipe, spec: ModelConfig, size: int = 16) -> list:
    """Batches of the validation split (what choices are scored on), or random inputs:
    :func:`~deeprebirth.planning.select.error_images` images in batches of ``size``."""

    n = error_images(spec.input_size, size) // size
    if recipe.data.spec:
        ds = get_dataset(
            recipe.data.spec, "val", input_size=spec.input_size, in_chans=spec.in_chans
        )
        return [x for x, _ in islice(get_loader(ds, size), n)]
    return [example_input(size, spec.in_chans, spec.input_size, seed=i) for i in range(n)]


def select_step(recipe: Recipe, model: nn.Module, spec: ModelConfig, hooks):
    """The plan meeting the latency budget (``select.latency_budget_ms``; or
    ``select.latency_budget_share`` of the original's; or the latency of
    ``select.latency_budget_of``, as a share) at the least estimated error, checked by
    measuring it beside the original and the plan with every merge."""

    s = recipe.select
    example = example_input(1, spec.in_chans, spec.input_size)
    config = zoo_config(spec)
    share = s.latency_budget_share
    if s.latency_budget_of is not None:
        share, reference_ms, original_ms = budget_of(recipe, model, spec, hooks)
    if s.runtime == "ort-int8" and not recipe.export.int8:
        hooks.log(
            "the budget is for the model in int8 (select.runtime ort-int8): export.int8 "
            "writes that model"
        )
    hooks.log("finding every merge and Tucker rank to choose from")
    # every merge but Tucker-2, whose ranks are options of their own (tucker_plans)
    # ... and the exact merges that can cost time timed on the selection's runtime
    merges = dataclasses.replace(
        recipe.plan, tucker=False, runtime=recipe.plan.runtime or s.runtime
    )
    plan = make_plan(model, example, merges, name=spec.name, model_config=config, log=hooks.log)
    if not recipe.data.spec:
        hooks.log("no data: what each option costs in accuracy is estimated on random inputs")
    batches = validation_batches(recipe, spec)
    selection = select_plan(
        model,
        example,
        plan,
        s.latency_budget_ms,
        budget_share=share,
        tucker_plans=tucker_plans(model, example, name=spec.name, model_config=config),
        batches=batches,
        runtime=s.runtime,
        threads=s.threads,
        runs=s.runs,
        margin=s.margin,
        latency_model=s.latency_model,
        cost=tuned_cost(recipe, model, spec, plan, batches, hooks),
        out_of_reach=s.out_of_reach,
        log=hooks.log,
    )
    selected, _ = apply_plan(model, selection.plan, example)
    fixed, _ = apply_plan(model, plan, example)
    hooks.log(f"measuring the selected plan on {s.runtime}")
    t = latencies(
        {
            k: (m, example)
            for k, m in (("original", model), ("selected", selected), ("fixed", fixed))
        },
        runtimes=[s.runtime],
        threads=s.threads,
        runs=s.runs,
        sessions=SESSIONS,
        beside="original",
    )[s.runtime]
    selection.extra |= {
        "original_ms": t["original"].median_ms,
        "measured_ms": t["selected"].median_ms,
        "fixed_plan_ms": t["fixed"].median_ms,
        "error": reconstruction_error(selected, model, batches),
        "fixed_plan_error": reconstruction_error(fixed, model, batches),
    }
    extra = selection.extra
    extra["cost_batches"] = s.cost_batches
    if s.latency_budget_of is not None:
        extra |= {"budget_of": s.latency_budget_of, "reference_ms": reference_ms}
        extra |= {"budget_share": share, "budget_original_ms": original_ms}
    if share is not None:
        # Judged beside the original, in the same run: the share is what was asked.
        extra["share"] = extra["measured_ms"] / extra["original_ms"]
    if "blocks_ms" in extra:
        hooks.log(
            f"the selected plan's blocks predicted {extra['blocks_ms']:.3f} ms; measured "
            f"{extra['measured_ms']:.3f} ms ({extra['measured_ms'] / extra['blocks_ms'] - 1:+.1%})"
        )
    hooks.show("selection", selection)
    over = (
        extra["share"] > share if share is not None else extra["measured_ms"] > s.latency_budget_ms
    )
    if extra.get("out_of_reach"):
        hooks.note(
            f"the budget ({selection.budget_ms:.3f} ms) is out of reach: every option together, "
            f"the closest the options come, measured {extra['measured_ms']:.3f} ms "
            '(select.out_of_reach = "fastest")'
        )
    elif over:
        hooks.note(
            f"measured {extra['measured_ms']:.2f} ms is over the budget: savings did "
            "not add up as the table predicts (timing noise or interactions)"
        )
    return selection


def tuned_cost(recipe: Recipe, model: nn.Module, spec: ModelConfig, plan: Plan, batches, hooks):
    """``select.cost_batches``: a function giving an option's output error on ``batches``
    after that many training batches per stage of layer-wise tuning and as many of the
    whole-network fine-tune, each option from the same seed (None when 0: the error before
    tuning). The fine-tune runs at ``tune.finetune_lr``, or the least of
    ``tune.finetune_lr_choices`` (a choice among rates would cost more than the proxy)."""

    n = recipe.select.cost_batches
    if not n:
        return None
    data = recipe.data
    shape = {"input_size": spec.input_size, "in_chans": spec.in_chans}
    train = get_dataset(data.spec, "train", **shape)
    val = get_dataset(data.spec, "val", **shape)
    t = recipe.tune
    config = dataclasses.replace(
        t.tune_config(),
        max_batches=n,
        epochs_per_stage=1,
        finetune_batches=n,
        finetune_lr=t.finetune_lr or min(t.finetune_lr_choices),
        linearize_batches=0,
        budget_minutes=None,
    )
    if config.use_labels and not labels_fit(model, train, plan.input_shape):
        config = dataclasses.replace(config, use_labels=False)
    probe = list(islice(get_loader(val, data.batch_size), config.probe_batches))
    with torch.no_grad():
        reference = [model(x) for x in batches]
    hooks.log(
        f"each option's cost: its error after {n} batches per stage and {n} of fine-tune "
        f"(select.cost_batches; fine-tune at lr {config.finetune_lr:g})"
    )

    def cost(entries: Sequence[PlanEntry]) -> float:
        torch.manual_seed(0)  # every option tuned on the same batches
        result = slim(model, with_entries(plan, entries))
        with tempfile.TemporaryDirectory() as work:
            tune(
                result,
                model,
                get_loader(train, data.batch_size, shuffle=True),
                config,
                work,
                probe=probe,
            )
        return reconstruction_error(result.model.eval(), reference, batches)

    return cost


def budget_of(recipe: Recipe, model: nn.Module, spec: ModelConfig, hooks):
    """``select.latency_budget_of``: the reference model's latency as a share of the
    original's, both timed side by side in one run on ``select.runtime`` at the original's
    input; ``(share, reference_ms, original_ms)``."""
    s = recipe.select
    ref = open_model(
        ModelConfig(s.latency_budget_of, num_classes=spec.num_classes, in_chans=spec.in_chans),
        purpose="select.latency_budget_of",
    )
    example = example_input(1, spec.in_chans, spec.input_size)
    if ref.kind != "zoo" and ref.input_shape[1:] != list(example.shape[1:]):
        raise DeepRebirthError(
            f"select.latency_budget_of: {s.latency_budget_of} takes input "
            f"{ref.input_shape[1:]}, the model {list(example.shape[1:])}: not like for like"
        )
    if ref.runtime not in (None, s.runtime):
        raise DeepRebirthError(
            f"select.latency_budget_of: {s.latency_budget_of} runs only in {ref.runtime}, "
            f"the budget is for {s.runtime} (select.runtime)"
        )
    hooks.log(f"timing {ref.label} beside {spec.name} on {s.runtime}: its latency is the budget")
    t = latencies(
        {"original": (model, example), "reference": (ref.model, example)},
        runtimes=[s.runtime],
        threads=s.threads,
        runs=s.runs,
        sessions=SESSIONS,
        beside="original",
    )[s.runtime]
    original_ms, reference_ms = t["original"].median_ms, t["reference"].median_ms
    share = reference_ms / original_ms
    if share >= 1.0:
        raise DeepRebirthError(
            f"select.latency_budget_of: {ref.label} ({reference_ms:.3f} ms) is not faster than "
            f"{spec.name} ({original_ms:.3f} ms) on {s.runtime}: nothing to select"
        )
    hooks.log(
        f"{ref.label}: {reference_ms:.3f} ms against {original_ms:.3f} ms, a budget of "
        f"{share:.3f} of the original's latency"
    )
    return share, reference_ms, original_ms


@dataclass
class ResumedSelection:
    """A selection made by an interrupted run, read back so its tuning can continue."""

    plan: Any
    data: dict

    def to_dict(self) -> dict:
        return self.data


def selection_for(recipe: Recipe, model: nn.Module, spec: ModelConfig, out_dir: Path, hooks):
    """The latency-budget selection; kept in OUT.partial/ while tuning may be interrupted,
    so that a resumed run tunes the plan it started with (timing noise could choose
    another)."""

    work = Path(f"{out_dir}.partial")
    asked = {"model": spec.name, "select": dataclasses.asdict(recipe.select)}
    if recipe.tune.resume and (work / SELECTION_FILE).is_file():
        data = json.loads((work / SELECTION_FILE).read_text())
        if data.get("asked") != asked:
            raise DeepRebirthError(
                f"{work} holds a run selected for another model, budget or margin "
                "(select.margin is 0.03 unless set; it used to be 0): remove it, or "
                "set tune.resume=false to start again"
            )
        hooks.log(f"resuming: the plan selected before, from {work}")
        return ResumedSelection(Plan.load(work / "selected_plan.json"), data)
    selection = select_step(recipe, model, spec, hooks)
    if recipe.tune.resume and recipe.data.spec and recipe.tune.enabled:
        work.mkdir(parents=True, exist_ok=True)
        selection.plan.save(work / "selected_plan.json")
        write_json(work / SELECTION_FILE, selection.to_dict() | {"asked": asked})
    return selection


def fits_budget(recipe: Recipe) -> bool:
    """Whether ``tune.budget_minutes`` may leave learned merges off (``tune.fit_budget``):
    a plan the tool finds, tuned under a time budget."""
    t = recipe.tune
    return bool(
        t.fit_budget
        and t.budget_minutes
        and t.enabled
        and recipe.data.spec
        and not (recipe.select.selects() or recipe.plan.file or t.start_from)
        and not recipe.plan.exact_only
    )


def budget_plan(recipe: Recipe, model: nn.Module, spec: ModelConfig, plan, ctx, out_dir, hooks):
    """``plan`` (found here when None) with the learned merges ``tune.budget_minutes`` can
    recover (``planning.recoverable``), and what was measured; kept in OUT.partial/ while
    tuning may be interrupted, so that a resumed run tunes the plan it started with."""
    work = Path(f"{out_dir}.partial")
    asked = {
        "model": spec.name,
        "tune": dataclasses.asdict(recipe.tune),
        "plan": dataclasses.asdict(recipe.plan),
    }
    asked = json.loads(json.dumps(asked, default=str))  # as the file holds it
    if recipe.tune.resume and (work / BUDGET_FILE).is_file():
        data = json.loads((work / BUDGET_FILE).read_text())
        if data.get("asked") == asked:
            hooks.log(f"resuming: the plan fitted to the tuning budget before, from {work}")
            return Plan.from_dict(data["plan"]), data["fit"]
    plan = plan or plan_for(recipe, model, spec, hooks.log)
    learned = [e for e in plan.entries if trimmable(e)]
    if not learned:
        return plan, None
    config = recipe.tune.tune_config()
    train = get_dataset(
        recipe.data.spec, "train", input_size=spec.input_size, in_chans=spec.in_chans
    )
    batch = recipe.data.batch_size * ctx.world_size
    images = next(iter(get_loader(train, recipe.data.batch_size)))[0]
    seconds = step_seconds(model, images, ctx.device)
    linearizes = any(e.enabled and e.kind == "drop_activation" for e in plan.entries)
    per_pass = math.ceil(len(train) / batch)
    share, need = budget_share(config, len(learned), per_pass, seconds, linearizes)
    hooks.log(
        f"the plan's tuning needs about {need:.1f} min here ({seconds:.2f} s a batch); "
        f"tune.budget_minutes is {config.budget_minutes:g}"
    )
    fit = {"need_minutes": round(need, 2), "seconds_per_batch": round(seconds, 4)}
    if share < 1:
        example = example_input(1, spec.in_chans, spec.input_size)
        s = recipe.select
        plan, chosen = keep_recoverable(
            model,
            example,
            plan,
            share,
            validation_batches(recipe, spec),
            runtime=s.runtime,
            threads=s.threads,
            runs=s.runs,
            log=hooks.log,
        )
        fit |= chosen
        if chosen["left_off"]:
            hooks.note(
                f"tune.budget_minutes ({config.budget_minutes:g}) buys {share:.0%} of the "
                f"tuning this plan needs (about {need:.0f} min here): "
                f"{len(chosen['kept'])} of {len(learned)} learned merges kept (at most "
                f"{chosen['keep']}: those saving at least an average merge's share on "
                f"{s.runtime}, the most per unit of error first), "
                f"{len(chosen['left_off'])} left off ({', '.join(chosen['left_off'])}). "
                "More minutes slim more; tune.fit_budget=false tunes them all in this budget"
            )
    if recipe.tune.resume:
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / BUDGET_FILE, {"asked": asked, "plan": plan.to_dict(), "fit": fit})
    return plan, fit


def labels_fit(model: nn.Module, dataset, input_shape) -> bool:
    """Whether the data's classes are the model's outputs (as many; a data set that does not
    say is taken to fit), so that its labels can train the model."""
    classes = num_classes_of(dataset)
    if classes is None:
        return True
    with torch.no_grad():
        return model.eval()(torch.zeros(input_shape)).shape[-1] == classes


def tune_step(
    recipe: Recipe, teacher: nn.Module, result, spec: ModelConfig, ctx, out_dir: Path, hooks
) -> dict:

    data = recipe.data
    train = get_dataset(
        data.spec,
        "train",
        input_size=spec.input_size,
        in_chans=spec.in_chans,
        augment=data.augment,
    )
    loader = distributed.loader(train, data.batch_size, ctx)
    config = recipe.tune.tune_config()
    if config.use_labels and not labels_fit(teacher, train, result.plan.input_shape):
        hooks.note(
            f"the data's {num_classes_of(train)} classes are not the model's outputs: the "
            "fine-tune distils the teacher's logits alone (tune.use_labels off)"
        )
        config = dataclasses.replace(config, use_labels=False)
    # A stage is kept only if it leaves the student no worse on these held-out images.
    val = get_dataset(data.spec, "val", input_size=spec.input_size, in_chans=spec.in_chans)
    held_out = list(
        islice(
            get_loader(val, data.batch_size),
            max(config.probe_batches, config.lr_choice_val_batches),
        )
    )
    probe = held_out[: config.probe_batches]
    if recipe.tune.start_from:
        start_from(result, recipe.tune.start_from)
        hooks.log(f"starting from the tuned weights of {recipe.tune.start_from}: fine-tune only")
    with hooks.tuning_progress(ctx.is_main) as progress:
        records = tune(
            result,
            teacher,
            loader,
            config,
            f"{out_dir}.partial",
            resume=recipe.tune.resume,
            progress=progress,
            is_main=ctx.is_main,
            wrap=distributed.wrapper(ctx),
            device=ctx.device,
            probe=probe,
            choice=held_out[: config.lr_choice_val_batches],
            tuned=bool(recipe.tune.start_from),
        )
    cost = tuning_cost(records, data.batch_size * ctx.world_size, len(train))
    hooks.log(
        f"tuning took {cost['minutes']:.1f} min: {cost['batches']} batches, "
        f"{cost['passes']:.2f} passes over the {len(train):,} training images"
    )
    short = cut_short(records)
    if short:
        worst = ", ".join(f"{name} {100 * done:.0f}%" for name, done in short.items())
        hooks.note(
            f"tune.budget_minutes ended {len(short)} of {len(records)} runs before their "
            f"planned batches ({worst} done): the slimmed model is not fully recovered; "
            "compare its accuracy with the teacher's below, and give more minutes or a budget "
            "in passes (tune.finetune_epochs) instead"
        )
    record = {"config": config_dict(config), "stages": records, "cost": cost, "cut_short": short}
    if recipe.tune.start_from:
        record["start_from"] = recipe.tune.start_from
    return record


def evaluate_step(
    recipe: Recipe, teacher: nn.Module, student: nn.Module, spec: ModelConfig, hooks
) -> dict:
    """Top-1/top-5 of teacher and student: on val (what recipes are compared on) and on test
    (read once, to report the finished model)."""

    def loader(split: str):
        ds = get_dataset(
            recipe.data.spec, split, input_size=spec.input_size, in_chans=spec.in_chans
        )
        return get_loader(ds, 256)

    val, test = loader("val"), loader("test")
    acc = {}
    for who, model in (("teacher", teacher), ("slimmed", student)):
        v = evaluate(model, val)
        acc[who] = {**evaluate(model, test), "val_top1": v["top1"], "val_top5": v["top5"]}
    hooks.show("accuracy", acc)
    return acc


def evaluate_references(recipe: Recipe, references: list[str], spec: ModelConfig, hooks) -> dict:
    """Top-1/top-5 of the trained references (weights files) on the test split; one that
    does not fit the data is noted and left out (the slimmed model is saved by now)."""

    acc = {}
    for ref in references:
        name, model, ref_chans, trained = reference_model(ref, num_classes=10)
        if not trained:  # a zoo name: random weights, nothing to evaluate
            continue
        try:
            ds = get_dataset(
                recipe.data.spec, "test", input_size=spec.input_size, in_chans=ref_chans
            )
            acc[name] = evaluate(model, get_loader(ds, 256))
        except DeepRebirthError as e:
            hooks.note(f"reference {ref} not evaluated: {e}")
            continue
        hooks.show("reference", (name, acc[name]))
    return acc


def export_inputs(recipe: Recipe, spec: ModelConfig, hooks) -> tuple[Any, list | None]:
    """What an export is checked on (validation images, random ones without data) and, with
    ``export.int8``, the training images that calibrate it."""
    e = recipe.export
    inputs = check_inputs(recipe.data.spec, spec, 64 if e.int8 else 8)
    batches = None
    if e.int8:
        batches = calibration_batches(recipe.data.spec, spec, e.calibration_images)
        hooks.log(f"calibrating int8 ranges on {sum(len(b) for b in batches)} training images")
    return inputs, batches


def export_step(
    recipe: Recipe, model: nn.Module, spec: ModelConfig, out_dir: Path, hooks
) -> list[dict]:
    """Each format of ``export.formats`` into ``out_dir``, checked against PyTorch on real
    validation images (random ones without data); int8 calibrated on training images."""
    e = recipe.export
    inputs, batches = export_inputs(recipe, spec, hooks)
    records = []
    for fmt in e.formats:
        records.append(export_file(recipe, model, fmt, out_dir / EXPORT_FILES[fmt], inputs))
        hooks.show("export", records[-1])
    for fmt in (f for f in e.formats if f in INT8_FILES and e.int8):
        path = out_dir / INT8_FILES[fmt]
        records.append(export_file(recipe, model, fmt, path, inputs, batches))
        hooks.show("export", records[-1])
    return records


def export_file(
    recipe: Recipe, model: nn.Module, fmt: str, path: Path, inputs, batches: list | None = None
) -> dict:
    """``model`` as one ``fmt`` file at ``path``, checked against PyTorch on ``inputs``;
    int8 when calibration ``batches`` are given (``export.int8_format`` for ONNX)."""

    real = bool(recipe.data.spec)
    if batches is None:
        r = export(model, path, fmt, inputs)
        return {**r, "what": describe_export(fmt), "real_inputs": real}
    e = recipe.export
    choose_on = None
    if e.int8_calibration == "auto":  # judged on validation images, never the test split
        choose_on = labelled_batches(
            recipe.data.spec, "val", inputs.shape[-1], inputs.shape[1], e.int8_choice_images
        )
    if fmt == "executorch":
        r = export_executorch(model, path, inputs, batches, choose_on)
    else:
        r = export_int8(
            model,
            path,
            inputs,
            batches,
            e.int8_format,
            calibration_method=e.int8_calibration,
            choose_on=choose_on,
        )
    what = describe_export(fmt, int8=recipe.export.int8_format)
    return {**r, "format": f"{fmt}_int8", "what": what, "real_inputs": real}


def describe_export(fmt: str, int8: str | None = None) -> str:
    if int8 is None:
        return {"onnx": "ONNX", "executorch": "ExecuTorch program", "torchscript": "TorchScript"}[
            fmt
        ]
    return (
        "int8 ExecuTorch program, XNNPACK quantizer"
        if fmt == "executorch"
        else f"int8 ONNX, {int8}"
    )


def calibration_batches(data: str, spec: ModelConfig, images: int) -> list:
    """The first ``images`` training images (the same every run), for int8 ranges."""
    return [x for x, _ in labelled_batches(data, "train", spec.input_size, spec.in_chans, images)]


def labelled_batches(data: str, split: str, size: int, chans: int, images: int) -> list:
    """The first ``images`` (images, labels) pairs of ``split``, in batches of 64."""

    ds = get_dataset(data, split, input_size=size, in_chans=chans)
    return list(islice(((x, y) for x, y, *_ in get_loader(ds, 64)), -(-images // 64)))


def check_inputs(data: str | None, spec: ModelConfig, n: int) -> Any:
    """``n`` validation images for an export's parity check (random ones without data)."""

    if not data:
        return example_input(2, spec.in_chans, spec.input_size)

    ds = get_dataset(data, "val", input_size=spec.input_size, in_chans=spec.in_chans)
    return next(iter(get_loader(ds, n)))[0]


# --- the whole run -----------------------------------------------------------------------


def run(recipe: Recipe, hooks: Hooks | None = None, *, command: str | None = None) -> RunResult:
    """Run ``recipe`` end to end; everything goes into ``recipe.out``.

    Under ``torchrun``, tuning runs data-parallel and only rank 0 evaluates and writes.
    """
    hooks = hooks or Hooks()
    command = command or f"deeprebirth run (recipe for {recipe.model.name})"
    recipe.check()
    check(recipe)
    out_dir = Path(recipe.out)
    ctx = distributed.setup(recipe.tune.device)  # under torchrun: one of N processes
    plan = None
    if recipe.plan.file:
        plan, spec = _load_plan_file(recipe)
        recipe = recipe.replace(model=spec)
    model, spec = load_model(recipe.model, "slimming")
    recipe = recipe.replace(model=spec)
    run_result = RunResult(out_dir, recipe)
    if recipe.profile.enabled and ctx.is_main:
        run_result.summary["profile"] = profile_step(recipe, model, spec, hooks, command)
    p = recipe.plan
    if recipe.select.selects() or (p.runtime and plan is None):
        # made by measuring: rank 0 decides, the other ranks apply the same plan
        if ctx.is_main and recipe.select.selects():
            run_result.selection = selection_for(recipe, model, spec, out_dir, hooks)
            plan = run_result.selection.plan
        elif ctx.is_main:
            plan = plan_for(recipe, model, spec, hooks.log)
        plan = Plan.from_dict(distributed.from_main(ctx, plan.to_dict() if plan else None))
    fit = None
    if fits_budget(recipe):  # measured too: rank 0 decides
        if ctx.is_main:
            plan, fit = budget_plan(recipe, model, spec, plan, ctx, out_dir, hooks)
        plan = Plan.from_dict(distributed.from_main(ctx, plan.to_dict() if plan else None))
    if p.enable or p.disable:
        plan = (plan or plan_for(recipe, model, spec, hooks.log)).switch(p.enable, p.disable)
    hooks.log("planning" if plan is None else "applying the plan")
    result = slim(
        model,
        plan,
        config=p,
        name=spec.name,
        input_size=spec.input_size,
        in_chans=spec.in_chans,
        model_config=zoo_config(spec),
        log=hooks.log,
    )
    run_result.plan, rep = result.plan, result.report
    run_result.report = rep
    hooks.show("plan", result.plan)
    for entry_id, why in rep.reverted:
        hooks.show("reverted", (entry_id, why))
    learned = [e for e in result.plan.entries if not e.exact and e.id in rep.applied]
    tune_it = bool(recipe.data.spec) and recipe.tune.enabled
    if learned and not tune_it:
        how = "tune.enabled is false" if recipe.data.spec else "give data.spec to tune them"
        hooks.note(
            f"{len(learned)} learned merges keep the original weights untuned ({how}): the "
            "slimmed model is fast but not accurate"
        )
    summary = run_result.summary
    if tune_it and learned:
        summary["tuning"] = tune_step(recipe, model, result, spec, ctx, out_dir, hooks)
        if fit is not None:
            summary["tuning"]["budget_fit"] = fit
        distributed.barrier(ctx)
    if not ctx.is_main:  # rank 0 evaluates and writes
        distributed.teardown(ctx)
        return run_result
    if recipe.data.spec and recipe.evaluate.enabled:
        summary["accuracy"] = evaluate_step(recipe, model, result.model, spec, hooks)
    save(result, out_dir, dtype=torch.float16 if recipe.fp16_weights else None)
    recipe.save(out_dir / RECIPE_FILE, header=_recipe_header(command))
    _finish_tuning_files(summary, out_dir)
    distributed.teardown(ctx)

    if "profile" in summary:  # save() replaced the directory: the profile goes in after
        hooks.log(f"wrote {write_json(out_dir / 'profile.json', summary['profile'])}")
        hooks.log(f"wrote {plot_profile(summary['profile'], out_dir / 'profile.png')}")
    if run_result.selection is not None:
        sel = run_result.selection.to_dict()
        hooks.log(f"wrote {write_json(out_dir / SELECTION_FILE, sel)}")
    if recipe.export.formats:
        summary["export"] = export_step(recipe, result.model, spec, out_dir, hooks)
    if recipe.report.enabled:
        references = references_of(recipe)
        if recipe.data.spec and recipe.evaluate.enabled:
            summary["accuracy"].update(evaluate_references(recipe, references, spec, hooks))
        data = build_report(
            model,
            result.model,
            result.plan.input_shape,
            plan=result.plan,
            slim_report=rep,
            accuracy=summary.get("accuracy"),
            selection=run_result.selection.to_dict() if run_result.selection is not None else None,
            references=references,
            command=command,
            runtimes=recipe.report.runtimes or report_runtimes(),
            runs=recipe.report.runs,
            log=hooks.log,
        )
        hooks.log(f"wrote {write_report(data, out_dir)}")
    return run_result


def _finish_tuning_files(summary: dict, out_dir: Path) -> None:
    """tune_report.json (what tuning and evaluation measured) and the stage log beside the
    model; the checkpoints of OUT.partial/ are no longer needed."""

    partial = Path(f"{out_dir}.partial")
    record = {k: v for k, v in summary.items() if k in ("tuning", "accuracy")}
    if record:
        write_json(out_dir / "tune_report.json", record)
        if (partial / "tune_log.jsonl").is_file():
            os.replace(partial / "tune_log.jsonl", out_dir / "tune_log.jsonl")
    shutil.rmtree(partial, ignore_errors=True)


def _recipe_header(command: str) -> str:
    return (
        f"The resolved recipe of this directory (deeprebirth {version('deeprebirth')}).\n"
        f"Made by: {command}\n"
        "Run it again: deeprebirth run recipe.toml --set out=ANOTHER_DIR\n"
    )


# --- the demo ----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = ROOT / "recipes/demo.toml"


def demo_recipe(
    path: str | Path = DEMO_RECIPE, overrides: list[str] = ()
) -> tuple[Recipe, str | None]:
    """The demo's recipe, its relative paths taken from the repository root; without the
    data or the teacher weights, the speed-only variant (random weights at 224, nothing to
    tune or evaluate), and why."""

    recipe = Recipe.load(path, overrides)
    root = Path(path).resolve().parent.parent

    def rooted(p: str) -> str:
        return str(root / p) if not Path(p).is_absolute() and (root / p).exists() else p

    refs = [rooted(r) for r in recipe.report.references or []] or None
    checkpoint = recipe.model.checkpoint and rooted(recipe.model.checkpoint)
    recipe = recipe.replace(
        model=dataclasses.replace(recipe.model, checkpoint=checkpoint),
        report=dataclasses.replace(recipe.report, references=refs),
    )
    why = None
    if checkpoint and not Path(checkpoint).is_file():
        why = f"no teacher weights at {checkpoint}"
    elif recipe.data.spec == FASHION_MNIST:
        try:
            fashion_mnist_root()
        except DataNotFoundError as e:
            why = str(e)
    if why is None:
        return recipe, None
    speed_only = recipe.replace(
        model=ModelConfig(name=recipe.model.name),
        data=dataclasses.replace(recipe.data, spec=None),
        export=dataclasses.replace(recipe.export, int8=False),
        report=dataclasses.replace(recipe.report, references=None),
    )
    return speed_only, f"{why}; running the speed-only demo (random weights)"
