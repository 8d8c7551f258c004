"""Gradual linearization: dropped activations fade out in training, the chains merge after."""

import copy
import json

import pytest
import torch
from torch import nn

from deeprebirth import slimming
from deeprebirth.config import ConfigError
from deeprebirth.graph import capture, example_input
from deeprebirth.plan import PlanError
from deeprebirth.planning import make_plan
from deeprebirth.transforms.depth import end_in_activation
from deeprebirth.tuning import TuneConfig
from deeprebirth.tuning.linearize import Fade, insert_fades, remove_fades, set_fade
from deeprebirth.zoo import get_model

SIZE = 32


def mobilenet_plan():
    """MobileNetV2 (1 channel) and its depth plan at 32x32, the merged chains ending linear."""
    torch.manual_seed(0)
    model = get_model("mobilenet_v2", num_classes=10, in_chans=1).eval()
    x = example_input(1, 1, SIZE)
    return model, make_plan(
        model, x, name="mobilenet_v2", drop_activations=True, end_activation=False
    )


@pytest.fixture(scope="module")
def planned():
    model, plan = mobilenet_plan()
    plan.model_config = {"num_classes": 10, "in_chans": 1}
    return model, plan


def dropped_modules(model, result) -> set[str]:
    """The activation modules (by module name) that the applied drop_activation entries
    remove."""
    by_name = {n.name: n for n in capture(model).graph.nodes}
    return {
        by_name[n].target
        for e in result.plan.entries
        if e.kind == "drop_activation" and e.id in result.report.applied
        for n in e.nodes
        if n in by_name
        and by_name[n].op == "call_module"
        and isinstance(model.get_submodule(by_name[n].target), nn.ReLU6)
    }


def data(n=3, batch=4):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, 1, SIZE, SIZE, generator=g),
            torch.randint(0, 10, (batch,), generator=g),
        )
        for _ in range(n)
    ]


def test_fades_lead_from_the_original_to_the_network_without_the_dropped_activations(planned):
    """t = 0 is the original; t = 1 (and inference mode) the original with exactly the
    dropped activations gone, although torchvision's ReLU6 work in place."""
    model, plan = planned
    result = slimming.slim(model, plan)
    x = example_input(2, 1, SIZE)
    network, fades, _ = slimming._before_drops(result, model, x)
    names = dropped_modules(model, result)
    assert names and len(fades) == len(names)
    assert all(model.get_submodule(n).inplace for n in names)  # the original is untouched
    linear = copy.deepcopy(model)
    for name in names:
        linear.set_submodule(name, nn.Identity())
    with torch.no_grad():
        network.train()
        set_fade(fades, 0.0)
        assert torch.allclose(network(x), model(x), atol=1e-5)
        set_fade(fades, 1.0)
        assert torch.allclose(network(x), linear(x), rtol=1e-4, atol=1e-4)
        set_fade(fades, 0.0)
        network.eval()  # inference mode: the network as it will be merged
        assert torch.allclose(network(x), linear(x), rtol=1e-4, atol=1e-4)
        half = Fade().train()
        half.t = 0.5
        assert torch.equal(half(torch.tensor([-2.0]), torch.tensor([0.0])), torch.tensor([-1.0]))


def test_an_end_activation_fades_in_while_the_dropped_ones_fade_out(planned):
    """plan.end_activation: t = 0 is still the original; in inference mode each merged
    chain's output goes through a ReLU6; the merged student carries those ReLU6s."""
    model, plan = planned
    plan = copy.deepcopy(plan)
    end_in_activation(plan.entries)
    result = slimming.slim(model, plan)
    x = example_input(2, 1, SIZE)
    network, fades, merge = slimming._before_drops(result, model, x)
    names = dropped_modules(model, result)
    ended = [
        e
        for e in result.plan.entries
        if e.kind == "drop_activation" and e.id in result.report.applied
    ]
    assert len(fades) == len(names) + len(ended)
    reference = copy.deepcopy(model)  # activation-free blocks, each merged one ending in ReLU6
    for name in names:
        reference.set_submodule(name, nn.Identity())
    for entry in ended:
        block = int(entry.id.split("..")[1].split(".")[1])  # the chain's last conv's block
        reference.features[block] = nn.Sequential(reference.features[block], nn.ReLU6())
    with torch.no_grad():
        network.train()
        set_fade(fades, 0.0)
        assert torch.allclose(network(x), model(x), atol=1e-5)
        network.eval()
        assert torch.allclose(network(x), reference(x), rtol=1e-4, atol=1e-4)
    merge(network)
    assert "linearize_fade" not in result.model.code
    ends = [m for n, m in result.model.named_modules() if n.endswith("_end")]
    assert len(ends) == len(ended) and all(isinstance(m, nn.ReLU6) for m in ends)


def test_removing_the_fades_gives_back_the_graph():
    model, plan = mobilenet_plan()
    result = slimming.slim(model, plan)
    network, fades, _ = slimming._before_drops(result, model, example_input(1, 1, SIZE))
    code = network.code
    assert "linearize_fade" in code
    remove_fades(network)
    assert "linearize_fade" not in network.code
    assert not any(isinstance(m, Fade) for m in network.modules())


def test_a_plan_whose_activations_are_gone_is_refused(planned):
    model, plan = planned
    result = slimming.slim(model, plan)
    network = capture(copy.deepcopy(model))
    for node in list(network.graph.nodes):  # every activation gone
        if node.op == "call_module" and isinstance(network.get_submodule(node.target), nn.ReLU6):
            node.replace_all_uses_with(node.args[0])
            network.graph.erase_node(node)
    network.recompile()
    with pytest.raises(PlanError, match="none of the activations it drops"):
        insert_fades(network, result.plan, result.report.applied)


def test_linearize_trains_merges_saves_and_resumes(planned, tmp_path):
    """The merged student carries the linearized weights (its own probe loss is recorded),
    saves and loads back to the same function, and a resumed run does not linearize
    again."""
    model, plan = planned
    result = slimming.slim(model, plan)
    untouched = {k: v.clone() for k, v in result.model.state_dict().items()}
    batches = data()
    config = TuneConfig(max_batches=0, linearize_batches=3, finetune_batches=0)
    records = slimming.tune(result, model, batches, config, tmp_path / "work", probe=batches[:1])
    assert [r["stage"] for r in records] == ["linearize"]
    assert records[0]["steps"] == 3 and "probe_merged" in records[0]
    state = result.model.state_dict()
    if records[0]["kept"]:
        assert any(not torch.equal(state[k], untouched[k]) for k in state)
    log = [json.loads(line) for line in (tmp_path / "work" / "tune_log.jsonl").open()]
    assert {"stage": "linearize", "event": "merged", "probe": records[0]["probe_merged"]} in log
    slimming.save(result, tmp_path / "out")
    x = batches[0][0]
    with torch.no_grad():
        assert torch.allclose(slimming.load(tmp_path / "out")(x), result.model(x), atol=1e-5)
    again = slimming.slim(model, plan)
    records = slimming.tune(again, model, batches, config, tmp_path / "work", resume=True)
    assert records == []  # linearized before: the resumed run has nothing left to do
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, state[k])


def test_a_depth_plan_is_linearized_by_default_and_its_chains_get_no_stage(planned, tmp_path):
    """The default tuning of a plan that drops activations: one linearization (a whole pass
    here), no layer-wise stage for the chains it tuned; linearize_batches = 0 keeps the
    old way, a stage per chain."""
    model, plan = planned
    batches = data()
    chains = {e.id for e in plan.entries if e.kind == "drop_activation"}
    default = TuneConfig(max_batches=1, linearize_epochs=1, finetune_batches=0)
    records = slimming.tune(slimming.slim(model, plan), model, batches, default, tmp_path / "a")
    assert [r["stage"] for r in records] == ["linearize"]
    assert records[0]["steps"] == len(batches)
    off = TuneConfig(max_batches=1, linearize_batches=0, finetune_batches=0)
    records = slimming.tune(slimming.slim(model, plan), model, batches, off, tmp_path / "b")
    staged = {i for r in records for i in r["stage"].split("+")}
    assert "linearize" not in staged and staged & chains


def test_an_interrupted_linearization_resumes_its_fade_where_it_saved_it(
    planned, tmp_path, monkeypatch
):
    """Cut in its second pass, the linearization goes on from the end of the first with the
    fades where they were then, as a run without the interruption would."""
    from deeprebirth.tuning import trainer

    model, plan = planned
    batches = data(n=2)
    config = TuneConfig(max_batches=0, linearize_batches=4, linearize_epochs=2, finetune_batches=0)
    fades: list = []
    real = trainer.set_fade
    monkeypatch.setattr(trainer, "set_fade", lambda f, t: (fades.append(t), real(f, t)))

    def linearized(work, progress=None, resume=False):
        result = slimming.slim(model, plan)
        slimming.tune(result, model, batches, config, work, progress=progress, resume=resume)
        return result.model

    whole = linearized(tmp_path / "a")
    uninterrupted, fades[:] = list(fades), []

    def interrupt_at_step_3(stage, step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        linearized(tmp_path / "b", interrupt_at_step_3)
    fades[:] = []
    resumed = linearized(tmp_path / "b", resume=True)
    assert fades == uninterrupted[2:]  # steps 3 and 4, not a fresh ramp
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=k)


def test_the_time_budget_caps_the_linearization_and_the_fades_still_finish(
    planned, tmp_path, monkeypatch
):
    """tune.budget_minutes bounds the linearization too: it stops on time, and the
    activations have faded out by then (the fade follows time as the learning rate does).
    A clock that moves one second per reading makes it deterministic."""
    from deeprebirth.tuning import trainer

    class Clock:
        now = 0.0

        def time(self):
            self.now += 1.0
            return self.now

    monkeypatch.setattr(trainer, "time", Clock())
    model, plan = planned
    result = slimming.slim(model, plan)
    before_drops, captured = slimming._before_drops, []

    def capture_fades(*args):
        network, fades, merge = before_drops(*args)
        captured.extend(fades)
        return network, fades, merge

    monkeypatch.setattr(slimming, "_before_drops", capture_fades)
    batches = data()
    config = TuneConfig(
        max_batches=0,
        linearize_batches=500,
        linearize_epochs=1000,
        finetune_batches=0,
        budget_minutes=1.0,  # 60 readings of the clock
    )
    records = slimming.tune(result, model, batches, config, tmp_path / "work", probe=batches[:1])
    assert records[0]["stage"] == "linearize"
    assert 2 <= records[0]["steps"] < 60  # stopped by the clock, far short of 500 batches
    assert captured and all(f.t == 1.0 for f in captured)


def test_linearize_settings_are_checked():
    with pytest.raises(ConfigError, match="exclude each other"):
        TuneConfig(linearize_batches=10, reinit=True).check()
    with pytest.raises(ConfigError, match="linearize_ramp"):
        TuneConfig(linearize_ramp=0.0).check()
    with pytest.raises(ConfigError, match="max_batches must be at least 0"):
        TuneConfig(max_batches=-1).check()
    TuneConfig(max_batches=0, linearize_batches=10).check()  # no stages: allowed
