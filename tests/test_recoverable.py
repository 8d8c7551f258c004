"""A tuning budget that buys only a share of the plan's tuning keeps that share of the
learned merges (planning.recoverable, tuning.budget, pipeline.budget_plan)."""

import json

import pytest
import torch
from test_cli import run_cli
from user_models import tiny_cnn

from deeprebirth.plan import PlanEntry
from deeprebirth.planning.recoverable import pick
from deeprebirth.planning.select import Option
from deeprebirth.tuning.budget import budget_share, step_seconds, tuning_batches
from deeprebirth.tuning.trainer import TuneConfig


def entry(name):
    return PlanEntry(name, "streamline", False, [name])


def opt(key, saving, cost, group=None, entries=None):
    return Option(key, group or key, entries or [entry(key)], saving_ms=saving, cost=cost)


def test_pick_spends_a_short_budget_on_the_merges_that_save_most_per_error():
    options = [
        opt("lrn", 1.2, 0.45),  # saves most, costs most
        opt("stem", 0.4, 0.09),
        opt("pool3", 0.35, 0.7),
        opt("tiny", 0.02, 0.0002),  # best ratio, but saves below an average merge's share
        opt("tinier", 0.01, 0.0002),
        opt("slower", -0.1, 0.01),
    ]
    assert [o.key for o in pick(options, 2)] == ["stem", "lrn"]
    assert [o.key for o in pick(options, 3)] == ["stem", "lrn", "pool3"]
    assert [o.key for o in pick(options, 6)] == ["stem", "lrn", "pool3"]  # never the others


def test_pick_takes_one_option_per_group_within_the_count():
    b, pool = entry("b"), entry("pool")
    options = [
        opt("b", 0.5, 0.1, group="g", entries=[b]),
        opt("b+pool", 2.0, 0.15, group="g", entries=[b, pool]),
        opt("c", 1.0, 0.3),
    ]
    picked = pick(options, 2)
    assert [o.key for o in picked] == [
        "b+pool"
    ]  # 13 ms per unit of error, two merges: the count is full
    assert [o.key for o in pick(options, 3)] == ["b+pool", "c"]


def test_the_planned_tuning_counts_stages_choice_and_passes():
    c = TuneConfig(max_batches=200, finetune_epochs=2, finetune_lr=None)
    choice = len(c.finetune_lr_choices) * c.lr_choice_batches
    assert tuning_batches(c, stages=3, per_pass=100, linearizes=False) == 300 + 200 + choice
    c = TuneConfig(max_batches=200, epochs_per_stage=1, finetune_epochs=1, finetune_lr=1e-3)
    assert tuning_batches(c, stages=2, per_pass=1000, linearizes=True) == 400 + 3000 + 1000
    c = TuneConfig(max_batches=50, all_at_once=True, finetune_batches=0)
    assert tuning_batches(c, stages=4, per_pass=1000, linearizes=False) == 50
    half = TuneConfig(max_batches=100, finetune_batches=0, budget_minutes=1.0)
    share, need = budget_share(
        half, stages=2, per_pass=1000, seconds_per_batch=0.6, linearizes=False
    )
    assert need == pytest.approx(2.0) and share == pytest.approx(0.5)
    assert budget_share(TuneConfig(), 2, 10, 0.6, False)[0] == 1.0  # no budget: all of it


def test_a_step_is_timed_without_changing_the_model():
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert step_seconds(model, torch.randn(4, 3, 16, 16)) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture
def timed(monkeypatch):
    """Deterministic timings: a slow batch, and the stem's streamline saving most."""
    import deeprebirth.pipeline as pipeline
    import deeprebirth.planning.recoverable as recoverable

    def measure_blocks(model, example, plan, options, batches, **kw):
        for o in options:
            o.saving_ms = 1.0 if any(e.kind == "streamline" for e in o.entries) else 0.5
            o.cost = 0.1
        return {"base": 2.0, "original": 3.0}, None

    monkeypatch.setattr(recoverable, "measure_blocks", measure_blocks)
    monkeypatch.setattr(pipeline, "step_seconds", lambda *a, **k: 60.0)


def slim_args(tmp_path, *extra):
    return (
        "slim", "user_models:tiny_cnn", "--input-size", "16", "--data", "synthetic",
        "--budget-minutes", "0.02", "--max-batches", "2", "--finetune-batches", "2",
        "--finetune-lr", "1e-3", "--no-report", "--no-eval", "--out", str(tmp_path / "s"), *extra,
    )  # fmt: skip


def test_a_short_budget_slims_only_what_it_can_and_says_so(capsys, tmp_path, timed):
    code, out, err = run_cli(capsys, *slim_args(tmp_path))
    assert code == 0, err
    said = " ".join((out + err).split())
    assert "1 of 2 learned merges kept" in said and "1 left off" in said
    s = tmp_path / "s"
    plan = json.loads((s / "plan.json").read_text())
    entries = {e["id"]: e for e in plan["entries"]}
    off = [e for e in entries.values() if not e["enabled"]]
    assert [e["kind"] for e in off] == ["branch_pool"]
    assert "the tuning budget keeps 1 of 2" in off[0]["note"]
    assert any(e["kind"] == "streamline" and i in plan["applied"] for i, e in entries.items())
    fit = json.loads((s / "tune_report.json").read_text())["tuning"]["budget_fit"]
    assert fit["keep"] == 1 and fit["learned"] == 2 and fit["left_off"] == [off[0]["id"]]
    assert fit["share"] < 1 and fit["seconds_per_batch"] == 60.0


def test_without_fit_budget_every_merge_is_tuned(capsys, tmp_path, timed):
    code, _, err = run_cli(capsys, *slim_args(tmp_path, "--no-fit-budget"))
    assert code == 0, err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert all(e["enabled"] for e in plan["entries"])
    assert (
        "budget_fit" not in json.loads((tmp_path / "s" / "tune_report.json").read_text())["tuning"]
    )


def test_a_resumed_run_tunes_the_plan_it_fitted_before(capsys, tmp_path, timed, monkeypatch):
    import deeprebirth.pipeline as pipeline

    work = tmp_path / "s.partial"
    fitted = {}
    original = pipeline.budget_plan

    def interrupted(*args, **kwargs):
        fitted["plan"], fitted["fit"] = original(*args, **kwargs)
        raise KeyboardInterrupt  # after the fit, before any tuning

    monkeypatch.setattr(pipeline, "budget_plan", interrupted)
    code, _, _ = run_cli(capsys, *slim_args(tmp_path, "--resume"))
    assert code == 130  # interrupted, its fitted plan kept for the next run
    assert (work / pipeline.BUDGET_FILE).is_file()
    monkeypatch.setattr(pipeline, "budget_plan", original)

    def untimed(*args, **kwargs):
        raise AssertionError("a resumed run does not time again")

    monkeypatch.setattr(pipeline, "step_seconds", untimed)
    code, out, err = run_cli(capsys, *slim_args(tmp_path, "--resume"))
    assert code == 0, err
    assert "fitted to the tuning budget before" in " ".join((out + err).split())
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    off = sorted(e["id"] for e in plan["entries"] if not e["enabled"])
    assert off == sorted(fitted["fit"]["left_off"])
