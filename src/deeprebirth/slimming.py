"""Slimming end to end: plan -> rewrite -> save; and loading a slimmed model back.

A slimmed model directory holds ``plan.json`` (the plan, with which entries were applied)
and ``model.safetensors`` (its weights). ``load(DIR)`` rebuilds the model from the base
model, the plan and the weights: no pickles anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn

from .errors import DeepRebirthError
from .files import umask
from .graph.capture import capture, example_input
from .plan import Plan, PlanConfig, PlanError
from .planning import make_plan
from .planning.discover import plan_config
from .transforms import SlimReport, apply_plan
from .transforms.runner import apply_entries
from .tuning import Stage, TuneConfig, Tuner, find_stages
from .tuning.linearize import insert_fades, remove_fades
from .zoo import apply_state_dict, get_model, list_models

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class SlimResult:
    model: fx.GraphModule
    plan: Plan
    report: SlimReport


def slim(
    model: nn.Module,
    plan: Plan | None = None,
    *,
    config: PlanConfig | None = None,
    name: str = "model",
    input_size: int = 224,
    in_chans: int = 3,
    model_config: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    **options: Any,
) -> SlimResult:
    """Slim ``model``: make a plan (or use the one given) and apply it. ``config`` (a
    :class:`PlanConfig`, the recipe's ``[plan]``) and ``options`` (its fields by name:
    ``exact_only=True``, ``drop_activations=True``, ``tucker=True``, ...) say which merges;
    ``runtime="ort"`` times the exact merges that can cost time and leaves off the slower
    (``log`` hears of it).

    Example:
        >>> from deeprebirth import get_model
        >>> result = slim(get_model("bvlc_googlenet"), name="bvlc_googlenet", input_size=64)
        >>> len(result.report.applied)
        23
    """
    model = model.eval()
    config = plan_config(config, options)
    if plan is None:
        example = example_input(1, in_chans, input_size)
        plan = make_plan(model, example, config, name=name, model_config=model_config, log=log)
    else:
        example = example_input(*plan.input_shape[:2], plan.input_shape[2])
    gm, report = apply_plan(model, plan, example, exact_only=config.exact_only)
    return SlimResult(gm, plan, report)


def tune(
    result: SlimResult,
    teacher: nn.Module,
    loader,
    config=None,
    work_dir: str | Path = "tune.partial",
    *,
    resume: bool = False,
    progress=None,
    is_main: bool = True,
    wrap=None,
    device: str | torch.device = "cpu",
    probe=None,
    choice=None,
    tuned: bool = False,
) -> list[dict]:
    """Layer-wise tuning of ``result.model`` against ``teacher`` (see ``deeprebirth.tuning``).

    Runs on ``device``. ``probe``: ``(images, labels)`` batches held out of the training data
    (the validation split) on which a stage must not make the student worse; without it,
    the first training batch is the probe. ``choice``: held-out batches the fine-tune's
    learning rate is chosen on, when ``config.finetune_lr`` is unset (default: the probe).
    Checkpoints go to ``work_dir`` after every stage; ``resume=True`` continues from there.
    ``tuned=True``: the student is tuned already (:func:`start_from`), only the fine-tune runs.
    Returns one record per stage run (and one for the final fine-tune).
    """

    config = config or TuneConfig()
    teacher_gm = capture(copy.deepcopy(teacher)).eval()
    example = torch.zeros(result.plan.input_shape)
    stages = find_stages(result.plan, result.report.applied, teacher_gm, result.model, example)
    if config.reinit:  # a resumed run then loads its checkpoint over these
        reinitialise(result.model, sorted({t for s in stages for t in s.trainable}))
    if config.all_at_once and stages:
        names = sorted({t for s in stages for t in s.trainable})
        kept = sorted({a for s in stages for a in s.approximating})
        stages = [Stage("all_at_once", names, ["<output>"], kept)]
    tuner = Tuner(
        teacher_gm,
        result.model,
        stages,
        loader,
        config,
        work_dir,
        progress=progress,
        is_main=is_main,
        wrap=wrap,
        device=device,
        probe=probe,
        choice=choice,
    )
    if tuned:  # as if the stages and the linearization were done
        tuner.state.update(completed=[s.id for s in stages], linearized=True)
    if resume:
        tuner.resume()
    records, fades = [], []
    if config.linearizes() and not tuner.state["linearized"]:
        network, fades, merge = _before_drops(result, teacher, example)
    if fades or tuner.state["linearized"]:  # the chains are tuned in place: no stage of theirs
        chains = {e.id for e in result.plan.entries if e.kind == "drop_activation"}
        done = {s.id for s in stages if set(s.id.split("+")) <= chains}
        tuner.state["completed"] = sorted(set(tuner.state["completed"]) | done)
    if fades:
        records.append(tuner.linearize(network, fades, merge, tuner.linearize_seconds()))
    records += tuner.run()
    result.model.cpu().eval()
    return records


def _before_drops(result: SlimResult, teacher: nn.Module, example: torch.Tensor):
    """For gradual linearization: the student as it is before its first drop_activation
    entry (the plan's earlier entries applied to ``teacher``, the original), with a fade
    after each activation the applied drop_activation entries remove; and the function that
    finishes a trained one: fades out, the rest of the plan applied, weights into
    ``result.model``."""

    applied = result.report.applied
    entries = [e for e in result.plan.entries if e.id in applied]
    first = next((i for i, e in enumerate(entries) if e.kind == "drop_activation"), None)
    if first is None:
        return None, [], None
    before = copy.deepcopy(result.plan)
    keep = {e.id for e in entries[:first]}
    for entry in before.entries:
        entry.enabled = entry.id in keep
    network, _ = apply_plan(teacher, before, example, parity_gate=False)
    fades = insert_fades(network, result.plan, applied)

    def merge(trained: fx.GraphModule) -> None:
        remove_fades(trained)
        apply_entries(trained, entries[first:], example.to(next(trained.parameters()).device))
        result.model.load_state_dict(trained.state_dict())

    return network, fades, merge


def reinitialise(model: nn.Module, names: list[str]) -> None:
    """Give the named layers fresh random weights (their own ``reset_parameters``)."""
    modules = dict(model.named_modules())
    for name in names:
        for m in modules[name].modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def save(result: SlimResult, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``plan.json`` and ``model.safetensors`` to ``out_dir``, all or nothing.

    ``dtype=torch.float16`` halves the file; ``load`` casts back to the model's dtype.
    """
    out_dir = Path(out_dir)
    data = result.plan.to_dict()
    data["applied"] = result.report.applied
    data["reverted"] = [list(r) for r in result.report.reverted]
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    except OSError as e:
        raise DeepRebirthError(f"cannot write to {out_dir.parent}: {e.strerror}") from e
    try:
        (tmp / PLAN_FILE).write_text(json.dumps(data, indent=2) + "\n")
        state = {
            k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().contiguous()
            for k, v in result.model.state_dict().items()
        }
        save_file(state, tmp / WEIGHTS_FILE)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_slimmed_dir(path: str | Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def load(path: str | Path) -> fx.GraphModule:
    """Rebuild a slimmed model from its directory (base model + plan + weights).

    Example:
        >>> model = load("runs/slim")  # doctest: +SKIP
    """
    path = Path(path)
    if not is_slimmed_dir(path):
        raise DeepRebirthError(f"{path} is not a slimmed model directory (no {PLAN_FILE})")
    data = json.loads((path / PLAN_FILE).read_text())
    plan = Plan.from_dict(data, source=str(path / PLAN_FILE))
    applied = set(data.get("applied", [e.id for e in plan.entries if e.enabled]))
    for entry in plan.entries:
        entry.enabled = entry.id in applied
    base = _base_model(plan, path)
    example = example_input(*plan.input_shape[:2], plan.input_shape[2])
    gm, _ = apply_plan(base, plan, example, parity_gate=False)
    if not (path / WEIGHTS_FILE).is_file():
        raise PlanError(f"{path} has no {WEIGHTS_FILE}")
    apply_state_dict(gm, load_file(path / WEIGHTS_FILE), source=str(path / WEIGHTS_FILE))
    return gm.eval()


def start_from(result: SlimResult, path: str | Path) -> None:
    """Give ``result.model`` the tuned weights of the slimmed directory ``path``, which must
    have been made with the same plan (the same merges applied, the same geometry)."""
    path = Path(path)
    if not is_slimmed_dir(path):
        raise DeepRebirthError(
            f"tune.start_from: {path} is not a slimmed model directory (no {PLAN_FILE})"
        )
    data = json.loads((path / PLAN_FILE).read_text())

    def merges(entries: list[dict], applied) -> list:
        return [(e["id"], e["geometry"]) for e in entries if e["id"] in applied]

    ours = json.loads(json.dumps(result.plan.to_dict()))["entries"]
    if merges(data.get("entries", []), set(data.get("applied", []))) != merges(
        ours, set(result.report.applied)
    ):
        raise DeepRebirthError(
            f"tune.start_from: {path} was slimmed with another plan than this run's: its "
            "weights belong to another network"
        )
    if not (path / WEIGHTS_FILE).is_file():
        raise PlanError(f"{path} has no {WEIGHTS_FILE}")
    apply_state_dict(result.model, load_file(path / WEIGHTS_FILE), source=str(path / WEIGHTS_FILE))


def _base_model(plan: Plan, path: Path) -> nn.Module:
    """A zoo model, or another slimmed directory (e.g. Tucker on a tuned slimmed model),
    found as written or, when it was written relative to elsewhere, beside ``path``."""
    if ":" in plan.model or plan.model in list_models():
        return get_model(plan.model, **plan.model_config)
    for candidate in (Path(plan.model), path.parent / Path(plan.model).name):
        if is_slimmed_dir(candidate):
            return load(candidate)
    raise PlanError(
        f"{path}: its base model {plan.model!r} is neither a known model nor a slimmed directory"
    )


def plan_of(path: str | Path) -> Plan:
    """The plan a slimmed directory was made with."""
    plan_file = Path(path) / PLAN_FILE
    return Plan.from_dict(json.loads(plan_file.read_text()), source=str(plan_file))
