"""The one-step commands' work: ``bench`` (two models side by side), ``evaluate`` (one
model on one split) and ``export`` (one model as one file). Any kind of model spec they can
use (:func:`deeprebirth.artifacts.open_model`); a recipe's run is :mod:`deeprebirth.pipeline`."""

from __future__ import annotations

from pathlib import Path

from .artifacts import kind_of, open_model
from .data import get_dataset, get_loader, num_classes_of
from .errors import DeepRebirthError
from .evaluation import evaluate
from .pipeline import check, export_file, export_inputs, load_model
from .profiling.profile import DEFAULT_RUNTIMES
from .recipe import ModelConfig, Recipe
from .report.hooks import nothing
from .slimming import plan_of


def bench_pair(
    a: str, b: str, input_size: int | None, runtimes: list[str] | None = None, log=nothing
):
    """Two models to time side by side: ``(model_a, model_b, input_shape, runtimes)``, any
    kind of spec (:func:`deeprebirth.artifacts.open_model`). A zoo model is built like the
    slimmed directory beside it; an exported file runs only in its own runtime, so both are
    timed there (an error if ``runtimes``, what was asked for, leaves it out; none: the
    profile's default runtimes)."""

    config = {"input_size": input_size}
    for spec in (a, b):
        if kind_of(spec) == "slimmed":
            plan = plan_of(spec)
            config = {**plan.model_config, "input_size": input_size or plan.input_shape[2]}
    art_a, art_b = (
        open_model(ModelConfig(s, **config), purpose="deeprebirth bench") for s in (a, b)
    )
    files = {s: m.runtime for s, m in ((a, art_a), (b, art_b)) if m.runtime}
    if len(set(files.values())) > 1:
        raise DeepRebirthError(f"{a} and {b} run in different runtimes")
    asked, runtimes = runtimes, runtimes or list(DEFAULT_RUNTIMES)
    for spec, runtime in files.items():
        if asked and runtime not in asked:
            raise DeepRebirthError(f"{spec} runs only in {runtime}: use --runtime {runtime}")
        if runtimes != [runtime]:
            log(f"{spec}: an exported file, timed in {runtime} only")
            runtimes = [runtime]
    shape_a, shape_b = art_a.input_shape, art_b.input_shape
    if shape_a[1:] != shape_b[1:]:
        raise DeepRebirthError(f"{a} takes input {shape_a[1:]} but {b} takes {shape_b[1:]}")
    return art_a.model, art_b.model, shape_a, runtimes


def evaluate_split(
    spec: ModelConfig, data: str, split: str, batch_size: int = 256, progress=nothing
) -> dict:
    """``deeprebirth evaluate``: top-1/top-5 of the model ``spec`` names (any kind that
    :func:`deeprebirth.artifacts.open_model` opens) on one split of ``data``; ``progress(done, total)``
    after each batch (images)."""

    artifact = open_model(spec, purpose="deeprebirth evaluate")
    model, size, in_chans = artifact.model, artifact.spec.input_size, artifact.spec.in_chans
    ds = get_dataset(data, split, input_size=spec.input_size or size, in_chans=in_chans)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        progress(done, len(ds))

    r = evaluate(model, get_loader(ds, batch_size), on_batch=on_batch)
    if (classes := num_classes_of(ds)) is not None:
        r["classes"] = classes
    return {**r, "model": spec.name, "data": data, "split": split}


def export_one(recipe: Recipe, path: Path, hooks) -> dict:
    """``deeprebirth export``: the recipe's model as one file, in the one format of
    ``export.formats`` (int8 with ``export.int8``), checked against PyTorch."""
    recipe.check()
    check(recipe)  # ExecuTorch installed, before any work
    (fmt,) = recipe.export.formats
    model, spec = load_model(recipe.model, "deeprebirth export")
    inputs, batches = export_inputs(recipe, spec, hooks)
    record = export_file(recipe, model, fmt, path, inputs, batches)
    hooks.show("export", record)
    return record
