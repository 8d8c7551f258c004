import copy
import dataclasses
import json

import pytest
import torch
from test_cli import one_line_error

from deeprebirth.cli import main
from deeprebirth.graph import example_input
from deeprebirth.pipeline import validation_batches
from deeprebirth.planning import make_plan
from deeprebirth.planning.select import (
    BudgetError,
    Option,
    build_options,
    calibration_sets,
    choose,
    error_images,
    reconstruction_error,
    with_entries,
)
from deeprebirth.recipe import ModelConfig, Recipe
from deeprebirth.zoo import get_model


def opt(key, group, saving, cost):
    return Option(key, group, [], saving_ms=saving, cost=cost)


def test_choose_finds_the_optimum_where_greedy_does_not():
    # Greedy by saving per cost takes b (3.0 per unit) then a (1.67): cost 4.0.
    # The optimum is b + c: saves 5.5 >= 5 at cost 2.9.
    groups = {
        "a": [opt("a", "a", 5.0, 3.0)],
        "b": [opt("b", "b", 3.0, 1.0)],
        "c": [opt("c", "c", 2.5, 1.9)],
    }
    picked, cost = choose(groups, need_ms=5.0)
    assert sorted(o.key for o in picked) == ["b", "c"]
    assert cost == pytest.approx(2.9)


def test_choose_takes_at_most_one_option_per_group():
    # Two ranks of one decomposition: both together would be cheapest, but only one may go.
    groups = {
        "t": [opt("t@4", "t", 2.0, 0.1), opt("t@2", "t", 3.0, 0.3)],
        "m": [opt("m", "m", 2.0, 1.0)],
    }
    picked, cost = choose(groups, need_ms=4.0)
    assert sorted(o.key for o in picked) == ["m", "t@4"] and cost == pytest.approx(1.1)
    picked, _ = choose(groups, need_ms=3.0)
    assert [o.key for o in picked] == ["t@2"]
    assert choose(groups, need_ms=0.0) == ([], 0.0)


def test_choose_says_what_is_reachable():
    groups = {"a": [opt("a", "a", 1.0, 1.0)], "b": [opt("b", "b", 0.5, 1.0)]}
    with pytest.raises(BudgetError, match="1.50 ms"):
        choose(groups, need_ms=2.0)


def test_options_cover_learned_merges_and_tucker_ranks():
    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    plan = make_plan(model, x)
    tucker = [make_plan(model, x, tucker=True, rank_ratio=r) for r in (None, 0.5)]
    options = build_options(model, x, plan, tucker)
    learned = {e.id for e in plan.entries if not e.exact}
    assert learned <= {o.key for o in options}
    assert all(o.group == o.entries[0].id for o in options)
    assert any(o.key.startswith("tucker:") for o in options)
    # with_entries: exact entries on, the chosen learned one on, nothing else
    one = next(o for o in options if o.key in learned)
    chosen = with_entries(plan, one.entries)
    assert {e.id for e in chosen.entries if e.enabled} == {
        e.id for e in plan.entries if e.exact
    } | {one.key}


def test_a_tucker_option_is_built_on_the_base_as_the_whole_plan_builds_it():
    from deeprebirth.planning.select import _build_options
    from deeprebirth.transforms import apply_plan

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    plan = make_plan(model, x)
    options = build_options(model, x, plan, [make_plan(model, x, tucker=True, rank_ratio=0.5)])
    tuckers = [o for o in options if o.key.startswith("tucker:")]
    assert tuckers
    _, built = _build_options(model, x, plan, tuckers, [x], log=lambda msg: None)
    for o in tuckers:
        whole, _ = apply_plan(model, with_entries(plan, o.entries), x)
        assert built[o.key].code == whole.code
        torch.testing.assert_close(built[o.key](x), whole(x), rtol=0, atol=0)


def test_the_table_is_measured_in_passes_scaled_to_one_base(monkeypatch, tmp_path):
    import types

    import deeprebirth.planning.select as sel
    from deeprebirth.planning.select import SESSIONS, measure_options

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    plan = make_plan(model, x)
    options = build_options(model, x, plan)
    # Pass 2 runs the whole machine twice as slow; in pass 3 one option's session is off.
    speed = iter([1.0, 2.0, 1.1])
    first = options[0].key

    def latencies(models, **kw):
        f, ms = next(speed), {}
        assert kw["beside"] == "base"  # each model timed beside the base alone
        for k in models:
            ms[k] = 12.0 if k == "original" else 10.0 if k.startswith("base") else 9.0
            if k == first and f == 1.1:
                ms[k] = 5.0
            ms[k] *= f
        return {"ort": {k: types.SimpleNamespace(median_ms=v) for k, v in ms.items()}}

    monkeypatch.setattr(sel, "latencies", latencies)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert SESSIONS == 3
    table = measure_options(model, x, plan, options, [x], use_cache=False)
    # Every pass is scaled to the median base (11 ms); the odd session is outvoted.
    assert table == {"base": pytest.approx(11.0), "original": pytest.approx(13.2)}
    assert all(o.saving_ms == pytest.approx(1.1) for o in options)
    assert next(speed, None) is None  # three passes, no more


def test_a_chain_that_needs_learned_merges_is_offered_with_them():
    from deeprebirth.planning.select import _applies

    # tiny_cnn's chain conv1 -> b1/b2 crosses pool1 and b2_pool: it applies only once the
    # streamline and branch merges have removed them.
    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    plan = make_plan(model, x, drop_activations=True)
    options = build_options(model, x, plan)
    chained = [o.key for o in options if any(e.kind == "drop_activation" for e in o.entries)]
    assert chained == ["streamline:conv1+branch_pool:b2_pool+drop_activation:conv1..b1_fused"]
    # One group: the DP takes the chain's option or a merge's, never both (no double count).
    assert len({o.group for o in options}) == 1
    assert all(_applies(model, plan, x, o.entries) for o in options)


def _slim_budget(tmp_path, budget):
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--selection-runs", "3"]
    args += ["--report-runtimes", "ort"]
    return main([*args, "--latency-budget", str(budget), "--out", str(tmp_path / "s")])


def test_unreachable_budget_is_one_line_and_writes_nothing(capsys, tmp_path):
    code = _slim_budget(tmp_path, 1e-6)
    one_line_error(code, capsys.readouterr().err, "out of reach")
    assert not (tmp_path / "s").exists()


def test_generous_budget_needs_no_learned_merge(capsys, tmp_path):
    assert _slim_budget(tmp_path, 1e6) == 0
    sel = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert sel["chosen"] == [] and sel["options"]
    assert {"measured_ms", "fixed_plan_ms", "error", "fixed_plan_error"} <= set(sel["extra"])
    assert sel["extra"]["error"] <= sel["extra"]["fixed_plan_error"]
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert all(e["exact"] for e in plan["entries"] if e["enabled"])
    # The plan says what each learned entry saves, measured: the option of that entry alone.
    alone = {o["entries"][0]: o["saving_ms"] for o in sel["options"] if len(o["entries"]) == 1}
    learned = {e["id"]: e["latency_saved_ms"] for e in plan["entries"] if not e["exact"]}
    assert learned and all(
        learned[k] == pytest.approx(v, abs=1e-4) for k, v in alone.items() if k in learned
    )
    assert "ms saved" in capsys.readouterr().out
    assert "Selection under a latency budget" in (tmp_path / "s" / "report.md").read_text()
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert list(report["latency"]) == ["ort"]  # --report-runtimes


def fake_latencies(ms: dict[str, float], default: float):
    """``latencies`` with fixed medians: by key (``base#1`` is ``base``), else ``default``."""
    from deeprebirth.profiling.timing import Timing

    def latencies(models, *, runtimes, **kwargs):
        t = {k: ms.get(k.split("#")[0], default) for k in models}
        return {runtimes[0]: {k: Timing(v, v, v, 1) for k, v in t.items()}}

    return latencies


def test_a_budget_share_is_of_the_original_timed_beside_the_options(capsys, tmp_path, monkeypatch):
    import deeprebirth.planning.select as sel
    from deeprebirth import pipeline

    # The original takes 10 ms, the exact merges 8, each option 7, the selected model 6.
    times = {"original": 10.0, "base": 8.0, "chosen": 6.0, "selected": 6.0, "fixed": 5.0}
    for where in (sel, pipeline):  # the table, and the check of the selected plan
        monkeypatch.setattr(where, "latencies", fake_latencies(times, 7.0))
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--selection-runs", "3"]
    args += ["--no-report", "--latency-budget-share", "0.7", "--out", str(tmp_path / "s")]
    args += ["--latency-model", "networks", "--budget-margin", "0"]
    assert main(args) == 0
    sel = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert sel["budget_ms"] == pytest.approx(7.0) and sel["original_ms"] == 10.0
    assert len(sel["chosen"]) == 1  # one option (saving 1 ms of the 1 needed) is enough
    assert sel["extra"]["share"] == pytest.approx(0.6)  # judged beside the original
    assert "0.60 of the original's 10.00 ms" in capsys.readouterr().out


def test_a_budget_for_the_int8_model_is_timed_in_int8(capsys, tmp_path, monkeypatch):
    import deeprebirth.planning.select as sel
    from deeprebirth import pipeline

    asked = []

    def latencies(models, *, runtimes, **kwargs):
        asked.extend(runtimes)
        return fake_latencies(times, 7.0)(models, runtimes=runtimes, **kwargs)

    times = {"original": 10.0, "base": 8.0, "chosen": 6.0, "selected": 6.0, "fixed": 5.0}
    for where in (sel, pipeline):
        monkeypatch.setattr(where, "latencies", latencies)
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--selection-runs", "3"]
    args += ["--no-report", "--latency-budget-share", "0.7", "--out", str(tmp_path / "s")]
    args += ["--latency-model", "networks", "--runtime", "ort-int8"]
    assert main(args) == 0
    assert asked and set(asked) == {"ort-int8"}  # the table and the check, all in int8
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["runtime"] == "ort-int8"
    log = " ".join(capsys.readouterr().err.split())
    assert "the budget is for the model in int8" in log  # and export.int8 writes that model


def test_a_budget_of_another_model_is_its_latency_timed_beside_the_original(
    capsys, tmp_path, monkeypatch
):
    import deeprebirth.planning.select as sel
    from deeprebirth import pipeline

    # The reference takes 7 ms beside the original's 10: a budget of 0.7 of it.
    times = {"original": 10.0, "reference": 7.0, "base": 8.0, "selected": 6.0, "fixed": 5.0}
    for where in (sel, pipeline):
        monkeypatch.setattr(where, "latencies", fake_latencies(times, 7.0))
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--selection-runs", "3"]
    args += ["--no-report", "--latency-model", "networks", "--out", str(tmp_path / "s")]
    assert main([*args, "--latency-budget-of", "squeezenet1_1"]) == 0
    sel_file = json.loads((tmp_path / "s" / "selection.json").read_text())
    extra = sel_file["extra"]
    assert extra["budget_of"] == "squeezenet1_1" and extra["reference_ms"] == 7.0
    assert extra["budget_share"] == pytest.approx(0.7)
    assert sel_file["budget_ms"] == pytest.approx(7.0)  # 0.7 of the original's 10 ms
    log = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "a budget of 0.700 of the original's latency" in log
    # A reference that is not faster leaves nothing to select: one line, nothing written.
    times["reference"] = 12.0
    code = main([*args[:-1], str(tmp_path / "t"), "--latency-budget-of", "squeezenet1_1"])
    one_line_error(code, capsys.readouterr().err, "is not faster than")
    assert not (tmp_path / "t").exists()


def test_one_budget_at_a_time(capsys, tmp_path):
    args = ["slim", "user_models:tiny_cnn", "--latency-budget-share", "0.5"]
    code = main([*args, "--latency-budget-of", "squeezenet1_1", "--out", str(tmp_path / "s")])
    one_line_error(code, capsys.readouterr().err, "give one budget, not 2")


def test_only_everything_reaches_the_budget(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 1.0, 1.0), opt("b", "b", 2.0, 2.0), opt("b2", "b", 1.5, 0.5)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: {"base": 10.0, "original": 12.0})
    monkeypatch.setattr(sel, "_measure_choice", lambda m, x, p, picked, *a: 6.9)
    # 3 ms needed: only the fastest option of each group, together, saves that.
    s = sel.select_plan(model, x, make_plan(model, x), budget_ms=7.0, latency_model="networks")
    assert sorted(s.chosen) == ["a", "b"] and s.original_ms == 12.0


def test_selection_asks_for_more_when_savings_do_not_add_up(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 2.0, 1.0), opt("b", "b", 2.0, 2.0), opt("c", "c", 2.0, 3.0)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    table = {"base": 10.0, "original": 11.0}  # base: 10 ms
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: table)
    # Each option really saves half of what the table says.
    monkeypatch.setattr(
        sel,
        "_measure_choice",
        lambda m, x, p, picked, *a: 10.0 - sum(o.saving_ms for o in picked) / 2,
    )
    s = sel.select_plan(model, x, make_plan(model, x), budget_ms=8.0, latency_model="networks")
    assert [r["measured_ms"] for r in s.rounds] == [9.0, 8.0]
    assert sorted(s.chosen) == ["a", "b"] and s.cost == 3.0
    # When even everything misses the budget, the fastest choice is kept and reported.
    s = sel.select_plan(model, x, make_plan(model, x), budget_ms=5.0, latency_model="networks")
    assert s.rounds[-1]["measured_ms"] == 7.0 and sorted(s.chosen) == ["a", "b", "c"]


def test_a_raised_need_the_grid_falls_short_of_tries_everything(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 1.0, 1.0), opt("b", "b", 1.0, 2.0), opt("c", "c", 1.0, 3.0)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: {"base": 10.0, "original": 11.0})
    monkeypatch.setattr(  # each option really saves 0.6678 of what the table says
        sel,
        "_measure_choice",
        lambda m, x, p, picked, *a: 10.0 - sum(o.saving_ms for o in picked) * 0.6678,
    )
    # Round 1 (a, b) saves 1.34 of the 2 ms needed, so 2.995 ms is asked next: less than
    # the 3 ms all three save, but more than their savings rounded down to the DP's grid.
    s = sel.select_plan(model, x, make_plan(model, x), budget_ms=8.0, latency_model="networks")
    assert len(s.rounds) == 2 and sorted(s.chosen) == ["a", "b", "c"]
    assert s.rounds[-1]["measured_ms"] <= 8.0


def test_what_every_option_reaches_together_is_judged_by_its_blocks(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    # alone each saves 1 ms of the base's 10; together, by their blocks, 4 ms
    options = [Option("a", "a", ["a"], 1.0, 1.0), Option("b", "b", ["b"], 1.0, 2.0)]
    together = {("a",): 9.0, ("b",): 9.0, ("a", "b"): 6.0}

    class Blocks:  # a block model predicting by the entries a network was built with
        calibration_miss = constant_ms = ms_per_mb = 0.0
        calibration: list = []

        def predict(self, gm, example):
            return together[tuple(sorted(gm))], []

    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    table = {"base": 10.0, "original": 10.0}
    monkeypatch.setattr(sel, "measure_blocks", lambda *a, **k: (table, Blocks()))
    monkeypatch.setattr(sel, "with_entries", lambda plan, entries: list(entries))
    monkeypatch.setattr(sel, "apply_plan", lambda model, plan, example: (plan, None))
    monkeypatch.setattr(sel, "weights_mb", lambda m: 0.0)
    monkeypatch.setattr(sel, "record_savings", lambda plan, options: plan)
    plan = make_plan(model, x)
    # 7 ms: beyond what the savings add up to (8 ms), in reach of both together (6 ms)
    s = sel.select_plan(model, x, plan, budget_ms=7.0, latency_model="blocks")
    assert sorted(s.chosen) == ["a", "b"] and s.extra["blocks_ms"] == 6.0
    # 9 ms: the savings are asked for as much less as they understate, so one will do
    s = sel.select_plan(model, x, plan, budget_ms=9.0, latency_model="blocks")
    assert s.chosen == ["a"] and len(s.rounds) == 1
    # Where together they save less than the sum says, the blocks decide what is in reach.
    together[("a", "b")] = 9.5
    with pytest.raises(BudgetError, match="all options together about 9.500 ms") as e:
        sel.select_plan(model, x, plan, budget_ms=8.5, latency_model="blocks")
    assert e.value.fastest_ms == 9.5


def test_a_margin_aims_under_the_budget(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 2.0, 1.0), opt("b", "b", 2.0, 2.0), opt("c", "c", 2.0, 3.0)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: {"base": 10.0, "original": 11.0})
    monkeypatch.setattr(  # each option really saves half of what the table says
        sel,
        "_measure_choice",
        lambda m, x, p, picked, *a: 10.0 - sum(o.saving_ms for o in picked) / 2,
    )
    plan = make_plan(model, x)
    assert sel.select_plan(model, x, plan, budget_ms=9.0, latency_model="networks").chosen == [
        "a"
    ]  # 9.0: just met
    s = sel.select_plan(model, x, plan, budget_ms=9.0, margin=0.1, latency_model="networks")
    assert sorted(s.chosen) == ["a", "b"] and s.rounds[-1]["measured_ms"] == 8.0
    assert (s.budget_ms, s.target_ms) == (9.0, pytest.approx(8.1))
    # a budget every option together just reaches: its margin is not, the budget is
    s = sel.select_plan(model, x, plan, budget_ms=4.0, margin=0.1, latency_model="networks")
    assert sorted(s.chosen) == ["a", "b", "c"] and s.target_ms == pytest.approx(4.0)
    with pytest.raises(sel.BudgetError, match="out of reach") as missed:
        sel.select_plan(model, x, plan, budget_ms=3.9, margin=0.1, latency_model="networks")
    # it says what the fastest plan would be (these options enable no entries of their own)
    assert missed.value.fastest_ms == pytest.approx(4.0)
    assert not any(e.enabled and not e.exact for e in missed.value.fastest.entries)
    # out_of_reach="fastest": that plan instead of the error, said to be out of reach
    s = sel.select_plan(
        model, x, plan, budget_ms=3.9, margin=0.1, latency_model="networks", out_of_reach="fastest"
    )
    assert sorted(s.chosen) == ["a", "b", "c"] and s.extra["out_of_reach"] is True
    assert s.rounds[-1]["measured_ms"] == 7.0 and len(s.rounds) == 1
    met = sel.select_plan(model, x, plan, budget_ms=9.0, latency_model="networks")
    assert "out_of_reach" not in met.extra
    with pytest.raises(ValueError, match="out_of_reach is one of"):
        sel.select_plan(model, x, plan, budget_ms=9.0, out_of_reach="closest")


def test_a_resumed_run_tunes_the_plan_it_selected_before(tmp_path, monkeypatch):
    import deeprebirth.pipeline as pipeline
    from deeprebirth.errors import DeepRebirthError
    from deeprebirth.planning.select import Selection
    from deeprebirth.recipe import Recipe

    model = get_model("user_models:tiny_cnn")
    plan = make_plan(model, example_input(1, 3, 16), name="user_models:tiny_cnn")
    calls = []

    def select_step(recipe, model, spec, hooks):
        calls.append(recipe.select.latency_budget_ms)
        return Selection(plan, [], [], "ort", 5.0, 6.0, 5.5, 0.0)

    monkeypatch.setattr(pipeline, "select_step", select_step)
    recipe = Recipe.from_dict(
        {
            "model": {"name": "user_models:tiny_cnn", "input_size": 16},
            "data": {"spec": "synthetic"},
            "select": {"latency_budget_ms": 5.0},
            "tune": {"resume": True},
            "out": str(tmp_path / "s"),
        }
    )
    _, spec = pipeline.load_model(recipe.model, "test")
    hooks = pipeline.Hooks()
    first = pipeline.selection_for(recipe, model, spec, tmp_path / "s", hooks)
    again = pipeline.selection_for(recipe, model, spec, tmp_path / "s", hooks)
    assert calls == [5.0]  # selected once; the interrupted run's choice is read back
    assert again.plan.to_dict() == first.plan.to_dict()
    assert again.to_dict()["budget_ms"] == 5.0
    other = recipe.replace(select=dataclasses.replace(recipe.select, latency_budget_ms=4.0))
    with pytest.raises(DeepRebirthError, match="another model, budget or margin"):
        pipeline.selection_for(other, model, spec, tmp_path / "s", hooks)


def test_options_slower_than_the_base_do_not_put_a_met_budget_out_of_reach(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", -0.5, 1.0), opt("b", "b", -0.2, 2.0)]  # timing noise: "slower"
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: {"base": 10.0, "original": 12.0})
    monkeypatch.setattr(sel, "_measure_choice", lambda m, x, p, picked, *a: 10.0)
    plan = make_plan(model, x)
    s = sel.select_plan(model, x, plan, budget_share=0.9, latency_model="networks")  # 10.8 ms
    assert s.chosen == [] and s.budget_ms == pytest.approx(10.8)


def test_a_selection_by_blocks_predicts_the_plan_and_reports_its_blocks(
    capsys, tmp_path, monkeypatch
):
    import deeprebirth.planning.blocks as blocks
    from deeprebirth import pipeline
    from deeprebirth.profiling.timing import Timing

    def by_weights(models, *, runtimes, **kwargs):  # 1 ms per 100 weights, 0.01 per call
        ms = {
            k: sum(p.numel() for p in m.parameters()) / 100 + 0.01 for k, (m, _) in models.items()
        }
        return {runtimes[0]: {k: Timing(v, v, v, 1) for k, v in ms.items()}}

    for where in (blocks, pipeline):
        monkeypatch.setattr(where, "latencies", by_weights)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--tucker"]
    args += ["--latency-budget-share", "0.8", "--out", str(tmp_path / "s")]
    assert main(args) == 0
    sel = json.loads((tmp_path / "s" / "selection.json").read_text())
    x = sel["extra"]
    assert x["latency_model"] == "blocks" and sel["chosen"]
    assert [r["blocks_ms"] for r in sel["rounds"]][-1] == pytest.approx(x["blocks_ms"])
    # weights add up: what the blocks predict is what the whole selected network "measures"
    assert x["blocks_ms"] == pytest.approx(x["measured_ms"], abs=0.05)
    assert x["measured_ms"] <= 0.8 * x["original_ms"]
    weights = x["ms_per_weight_mb"] * x["weights_mb"]
    assert sum(b["ms"] for b in x["blocks"]) + x["between_blocks_ms"] + weights == pytest.approx(
        x["blocks_ms"]
    )
    report = (tmp_path / "s" / "report.md").read_text()
    assert "| block of the selected plan |" in report and "its blocks predicted" in report
    assert len(x["calibration"]) == 5 and "| plan 4 |" in report


def test_the_latency_model_follows_the_runtime_unless_asked(monkeypatch):
    import deeprebirth.planning.select as sel

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 2.0, 1.0)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    monkeypatch.setattr(sel, "measure_options", lambda *a, **k: {"base": 10.0, "original": 11.0})
    monkeypatch.setattr(sel, "_measure_choice", lambda m, x, p, picked, *a: 8.0)
    plan = make_plan(model, x)
    # PyTorch eager: whole networks (blocks were not checked there)
    s = sel.select_plan(model, x, plan, budget_ms=9.0, runtime="torch")
    assert s.extra["latency_model"] == "networks" and s.rounds[0]["measured_ms"] == 8.0
    with pytest.raises(ValueError, match="latency_model"):
        sel.select_plan(model, x, plan, budget_ms=9.0, latency_model="guess")
    assert sel.DEFAULT_LATENCY_MODEL["ort"] == sel.DEFAULT_LATENCY_MODEL["executorch"] == "blocks"
    assert set(sel.DEFAULT_LATENCY_MODEL) == set(sel.SELECT_RUNTIMES)
    assert sel.DEFAULT_LATENCY_MODEL["ort-int8"] == "blocks"


def test_a_block_model_that_misses_the_plans_it_was_fitted_on_is_not_trusted(monkeypatch):
    import deeprebirth.planning.select as sel

    class Blocks:  # one plan timed whole 15% off what the fitted model says
        base_ms, calibration_miss = 10.0, 0.15
        constant_ms, ms_per_mb, calibration = -5.0, 0.0, []

        def predict(self, gm, example):
            return 7.0, []

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    options = [opt("a", "a", 2.0, 1.0)]
    monkeypatch.setattr(sel, "build_options", lambda *a, **k: options)
    table = {"base": 10.0, "original": 11.0}
    monkeypatch.setattr(sel, "measure_blocks", lambda *a, **k: (table, Blocks()))

    def whole_networks(*a, **k):
        raise AssertionError("every option timed on the whole network")

    monkeypatch.setattr(sel, "measure_options", whole_networks)
    measured = []
    monkeypatch.setattr(
        sel, "_measure_choice", lambda m, x, p, picked, *a: measured.append(picked) or 8.0
    )
    plan, logged = make_plan(model, x), []
    s = sel.select_plan(model, x, plan, budget_ms=9.0, runtime="ort", log=logged.append)
    # the blocks' savings choose; the choice (and every option together) is timed whole
    assert s.extra["latency_model"] == "blocks" and s.extra["judged"] == "measured"
    assert s.rounds[0]["measured_ms"] == 8.0 and "blocks_ms" not in s.rounds[0]
    assert s.chosen == ["a"] and len(measured) == 2
    assert any("misses a plan timed whole on ort by 15%" in m for m in logged)
    # asked for by name, the blocks are used as they are
    measured.clear()
    s = sel.select_plan(model, x, plan, budget_ms=9.0, runtime="ort", latency_model="blocks")
    assert s.extra["judged"] == "blocks" and s.extra["blocks_ms"] == 7.0 and not measured


def test_option_errors_use_the_reference_outputs_once_computed():
    torch.manual_seed(0)
    model = get_model("bvlc_alexnet", num_classes=10, in_chans=1).eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier[-1].weight.mul_(1.1)
    batches = [example_input(2, 1, 64, seed=i) for i in range(2)]
    with torch.no_grad():
        outputs = [model(x) for x in batches]
    from_model = reconstruction_error(other, model, batches)
    assert from_model > 0
    assert reconstruction_error(other, outputs, batches) == pytest.approx(from_model)


def test_an_option_runs_from_the_last_cut_it_shares_with_the_base():
    from torch import nn

    from deeprebirth.graph import capture
    from deeprebirth.planning.from_cuts import BaseOutputs

    class AddInPlace(nn.Module):  # writes into the cut's value it reads
        def forward(self, x):
            x += 1
            return x

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), AddInPlace()]
    layers += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)]
    base = capture(nn.Sequential(*layers).eval())
    batches = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    shared = BaseOutputs(base, batches)
    option = copy.deepcopy(base)
    with torch.no_grad():
        option.get_submodule("5").weight.mul_(2)  # the last conv changed
    assert shared.start(option) == "_4"  # the last cut before it, not the start
    for _ in range(2):  # the kept values are not written into
        for got, x in zip(shared.outputs(option), batches, strict=True):
            torch.testing.assert_close(got, option(x), rtol=0, atol=0)
    # a network that differs from its first layer runs whole
    first = copy.deepcopy(base)
    with torch.no_grad():
        first.get_submodule("0").bias.add_(1)
    assert shared.start(first) is None
    torch.testing.assert_close(shared.outputs(first)[0], first(batches[0]), rtol=0, atol=0)


def test_errors_on_random_inputs_are_measured_on_different_images():
    recipe = Recipe(model=ModelConfig("bvlc_googlenet"))
    spec = ModelConfig("bvlc_googlenet", in_chans=1, input_size=64)
    batches = validation_batches(recipe, spec)
    assert sum(len(x) for x in batches) == error_images(64) == 64
    assert not torch.equal(batches[0], batches[1])
    # large inputs: about as many pixels, in whole batches, at least one
    assert [error_images(s) for s in (32, 64, 96, 128, 224)] == [64, 64, 32, 16, 16]


def test_a_cost_function_prices_each_option_once(monkeypatch):
    import deeprebirth.planning.select as sel

    class Blocks:
        base_ms, calibration_miss = 10.0, 0.0
        constant_ms, ms_per_mb, calibration = 0.0, 0.0, []

        def predict(self, gm, example):
            return 8.0, []

    model, x = get_model("user_models:tiny_cnn"), example_input(1, 3, 16)
    plan = make_plan(model, x, name="user_models:tiny_cnn")
    calls = []

    def cost(entries):
        calls.append(tuple(e.id for e in entries))
        return 0.5 * len(entries)

    def measure(model, x, plan, options, batches, **kw):
        sel._build_options(model, x, plan, options, batches, kw["log"], kw["cost"])
        for o in options:
            o.saving_ms = 1.0
        return {"base": 10.0, "original": 11.0}

    monkeypatch.setattr(sel, "measure_blocks", lambda *a, **k: (measure(*a, **k), Blocks()))
    monkeypatch.setattr(sel, "measure_options", measure)
    monkeypatch.setattr(sel, "_measure_choice", lambda m, x, p, picked, *a: 8.0)
    s = sel.select_plan(model, x, plan, budget_ms=9.5, runtime="ort", cost=cost)
    assert s.options and all(o.cost == 0.5 * len(o.entries) for o in s.options)
    assert len(calls) == len(set(calls)) == len(s.options)  # each option priced once


def test_a_tuned_cost_is_the_error_after_a_short_tuning():
    from deeprebirth import pipeline
    from deeprebirth.transforms import apply_plan

    recipe = Recipe.from_dict(
        {
            "model": {"name": "user_models:tiny_cnn", "input_size": 16},
            "data": {"spec": "synthetic", "batch_size": 8},
            "select": {"latency_budget_share": 0.5, "cost_batches": 10},
            "out": "o",
        }
    )
    model, spec = pipeline.load_model(recipe.model, "test")
    x = example_input(1, 3, 16)
    plan = make_plan(model, x, name=spec.name)
    option = next(o for o in build_options(model, x, plan, []) if o.entries)
    batches = validation_batches(recipe, spec)
    before = reconstruction_error(
        apply_plan(model, with_entries(plan, option.entries), x)[0], model, batches
    )
    cost = pipeline.tuned_cost(recipe, model, spec, plan, batches, pipeline.Hooks())
    after = cost(option.entries)
    assert 0 <= after < before
    assert cost(option.entries) == pytest.approx(after)  # the same batches every time
    no_cost = recipe.replace(select=dataclasses.replace(recipe.select, cost_batches=0))
    assert pipeline.tuned_cost(no_cost, model, spec, plan, batches, pipeline.Hooks()) is None


def test_the_block_line_is_fitted_on_the_fastest_plan_and_seeded_random_sets():
    options = [
        opt("a1", "a", 2.0, 1.0),
        opt("a2", "a", 3.0, 2.0),
        opt("b", "b", 1.0, 1.0),
        opt("c", "c", -0.5, 1.0),  # saves nothing: not in the fastest plan
    ]
    sets = calibration_sets(options)
    assert [o.key for o in sets[0]] == ["a2", "b"]
    assert len(sets) == 4 and all(sets)
    assert [[o.key for o in s] for s in sets] == [
        [o.key for o in s] for s in calibration_sets(options)
    ]


def test_the_report_says_when_each_choice_was_timed_whole():
    from deeprebirth.report.markdown import _selection_lines

    rounds = [{"need_ms": 2.0, "predicted_ms": 8.0, "measured_ms": 8.5}]
    extra = {"latency_model": "blocks", "judged": "measured", "blocks_ms": 7.0, "blocks": []}
    extra |= {"between_blocks_ms": 0.1, "ms_per_weight_mb": 0.0, "weights_mb": 1.0}
    sel = {"budget_ms": 9.0, "runtime": "ort", "base_ms": 10.0, "rounds": rounds, "extra": extra}
    sel["options"] = []
    text = "\n".join(_selection_lines(sel))
    assert "so each choice was timed whole beside the base" in text
    assert "add up to 8.000 ms, measured 8.500 ms" in text
    rounds[0] = {"need_ms": 2.0, "predicted_ms": 8.0, "blocks_ms": 7.5}
    extra["judged"] = "blocks"
    text = "\n".join(_selection_lines(sel))
    assert "timed whole beside the base" not in text
    assert "its blocks predicted 7.500 ms" in text
    assert "out of reach" not in text
    extra["out_of_reach"] = True  # select.out_of_reach = "fastest" took every option
    assert "**The budget is out of reach**" in "\n".join(_selection_lines(sel))
