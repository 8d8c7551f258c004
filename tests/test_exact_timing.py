"""Exact merges that cost time: timed in the plan's runtime, left off where slower."""

import pytest
import torch
from torch import nn

from deeprebirth.errors import DeepRebirthError
from deeprebirth.graph import capture, example_input
from deeprebirth.planning import blocks as blocks_module
from deeprebirth.planning.blocks import COMPUTE, cut_nodes, split
from deeprebirth.profiling.timing import Timing
from deeprebirth.recipe import Recipe
from deeprebirth.report.tables import plan_table
from deeprebirth.slimming import slim


class Rep(nn.Module):
    """RepVGG style: a 3x3 and a 1x1 conv on one input, summed."""

    def __init__(self, c=4):
        super().__init__()
        self.k3, self.k1 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return torch.relu(self.k3(x) + self.k1(x))


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), Rep(), Rep(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


def timed_by(per_node: float):
    """``latencies`` by the number of compute nodes: ``per_node`` ms each (negative: fewer
    nodes run slower, as a merged kernel can)."""

    def latencies(models, *, runtimes, **kwargs):
        ms = {}
        for k, (m, _) in models.items():
            nodes = sum(n.op in COMPUTE for n in capture(m).graph.nodes)
            ms[k] = 1 + per_node * nodes
        return {runtimes[0]: {k: Timing(v, v, v, 1) for k, v in ms.items()}}

    return latencies


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def use(per_node):
        monkeypatch.setattr(blocks_module, "latencies", timed_by(per_node))

    return use


def test_an_exact_merge_slower_on_the_runtime_is_left_off_and_says_why(fake_timing):
    fake_timing(-0.05)  # the merged form (fewer nodes) runs slower
    x = example_input(1, 3, 8)
    logs = []
    result = slim(net(), input_size=8, exact_only=True, runtime="ort", log=logs.append)
    summed = [e for e in result.plan.entries if e.kind == "sum_parallel"]
    assert len(summed) == 2
    for entry in summed:
        assert not entry.enabled and "left off: slower on ort" in entry.note
        assert entry.latency_saved_ms < 0
    assert any("left off" in m for m in logs)
    # the branches stay as they were, and the model is the original's function
    kept = dict(result.model.named_modules())
    assert isinstance(kept["1.k1"], nn.Conv2d) and isinstance(kept["2.k1"], nn.Conv2d)
    torch.testing.assert_close(result.model(x), net()(x))
    assert "left off: slower on ort" in str(plan_table(result.plan).caption)
    # asked for by id, it is applied anyway
    plan = result.plan.switch(enable=[summed[0].id])
    again = slim(net(), plan, exact_only=True)
    assert summed[0].id in again.report.applied


def test_an_exact_merge_that_saves_time_is_kept_with_its_saving(fake_timing):
    fake_timing(0.05)
    result = slim(net(), input_size=8, exact_only=True, runtime="ort")
    summed = [e for e in result.plan.entries if e.kind == "sum_parallel"]
    assert summed and all(e.enabled and e.latency_saved_ms > 0 for e in summed)
    assert all(e.id in result.report.applied for e in summed)
    assert plan_table(result.plan).caption is None


def test_only_the_blocks_an_entry_changes_are_timed(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timed = []

    def latencies(models, **kw):
        timed.append(dict(models))
        return timed_by(0.05)(models, **kw)

    monkeypatch.setattr(blocks_module, "latencies", latencies)
    slim(net(), input_size=8, exact_only=True, runtime="ort")
    (models,) = timed
    # the Rep block merged and without the merge (the two Reps are alike: one block, timed
    # once); not the stem, the head or the network whole
    assert len(models) == 2
    assert [tuple(x.shape) for _, x in models.values()] == [(1, 4, 8, 8)] * 2


def test_without_a_runtime_nothing_is_timed(monkeypatch):
    monkeypatch.setattr(blocks_module, "latencies", None)  # would fail if called
    result = slim(net(), input_size=8, exact_only=True)
    assert all(e.enabled and e.latency_saved_ms is None for e in result.plan.entries)


def test_a_noisy_first_timing_does_not_leave_an_entry_off(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def latencies(models, **kw):  # slower the first time, faster the second
        calls.append(1)
        return timed_by(-0.05 if len(calls) == 1 else 0.05)(models, **kw)

    monkeypatch.setattr(blocks_module, "latencies", latencies)
    result = slim(net(), input_size=8, exact_only=True, runtime="ort")
    assert len(calls) == 2
    assert all(e.enabled for e in result.plan.entries if e.kind == "sum_parallel")


def test_a_plan_runtime_outside_the_choices_is_a_config_error():
    with pytest.raises(DeepRebirthError, match="plan.runtime: 'gpu' is not one of ort"):
        Recipe.from_dict({"model": {"name": "bvlc_googlenet"}, "plan": {"runtime": "gpu"}})


def test_blocks_never_end_at_a_split_that_outputs_several_tensors():
    class Fused(nn.Module):  # parallel convs as one conv and a split, as fuse_parallel makes
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            a, b = torch.split(self.conv(x), [4, 4], dim=1)
            return torch.cat([torch.relu(a), b], 1)

    gm = capture(nn.Sequential(Fused(), nn.Conv2d(8, 4, 1)).eval())
    x = torch.randn(1, 3, 8, 8)
    parts = split(gm, x, cut_nodes(gm))
    y = x
    for b in parts:
        assert b.input.shape == y.shape
        y = b.module(y)
    torch.testing.assert_close(y, gm(x))


def test_timed_in_onnx_runtime_for_real(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x = example_input(1, 3, 8)
    result = slim(net(), input_size=8, exact_only=True, runtime="ort")
    summed = [e for e in result.plan.entries if e.kind == "sum_parallel"]
    assert summed and all(e.latency_saved_ms is not None for e in summed)
    torch.testing.assert_close(result.model(x), net()(x), rtol=1e-4, atol=1e-5)


def test_under_torchrun_only_rank_0_times_the_plan(monkeypatch, tmp_path):
    from deeprebirth import pipeline
    from deeprebirth.tuning.distributed import Context

    made = slim(net(), name="user_models:rep", input_size=8, exact_only=True).plan
    made.entries[0].enabled = False  # rank 0's decision, as it would send it
    sent = []
    monkeypatch.setattr(pipeline.distributed, "setup", lambda device: Context(1, 2))
    monkeypatch.setattr(pipeline, "plan_for", None)  # rank 1 must not plan (nor time)
    monkeypatch.setattr(blocks_module, "latencies", None)

    def from_main(ctx, value):
        sent.append(value)
        return made.to_dict()

    monkeypatch.setattr(pipeline.distributed, "from_main", from_main)
    monkeypatch.setattr(pipeline, "load_model", lambda spec, purpose: (net(), spec))
    recipe = Recipe.from_dict(
        {
            "model": {"name": "user_models:rep", "input_size": 8, "in_chans": 3},
            "plan": {"runtime": "ort", "exact_only": True},
            "out": str(tmp_path / "out"),
        }
    )
    result = pipeline.run(recipe)
    assert sent == [None]  # rank 1 sends nothing, takes rank 0's plan
    assert result.plan.to_dict() == made.to_dict()
    assert made.entries[0].id not in result.report.applied
