import json

import pytest
import torch
from torch import nn

from deeprebirth import slimming
from deeprebirth.errors import DeepRebirthError
from deeprebirth.graph import example_input
from deeprebirth.plan import PLAN_VERSION, Plan, PlanError
from deeprebirth.planning import make_plan
from deeprebirth.transforms import MERGES, PARITY_TOLERANCE, apply_plan, relative_error
from deeprebirth.zoo import get_model

ZOO = [
    ("bvlc_googlenet", 64),
    ("bvlc_alexnet", 67),
    ("bvlc_caffenet", 67),
    ("googlenet", 64),
    ("resnet18", 64),
    ("mobilenet_v2", 64),
    ("squeezenet1_1", 64),
    ("vgg11", 32),
    ("user_models:tiny_cnn", 16),
]


@pytest.mark.parametrize("name, size", ZOO)
def test_zoo_plan_slim_forward(name, size):
    model = get_model(name, num_classes=10)
    x = example_input(2, 3, size)
    result = slimming.slim(model, name=name, input_size=size, model_config={"num_classes": 10})
    assert not result.report.reverted
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    exact, _ = apply_plan(model, result.plan, x, exact_only=True)
    with torch.no_grad():
        assert relative_error(exact(x), model(x)) < 10 * PARITY_TOLERANCE


def test_googlenet_slimmed_has_no_pool_or_lrn_left():
    from deeprebirth.export import to_onnx

    result = slimming.slim(get_model("bvlc_googlenet"), input_size=64)
    ops = {n.op_type for n in to_onnx(result.model, example_input(1, 3, 64)).graph.node}
    assert not ops & {"LRN", "MaxPool", "AveragePool"}


def test_plan_round_trip_and_edit(tmp_path):
    model = get_model("user_models:tiny_cnn")
    x = example_input(1, 3, 16)
    plan = make_plan(model, x, name="user_models:tiny_cnn")
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan and loaded.version == PLAN_VERSION
    streamline = next(e for e in loaded.entries if e.kind == "streamline")
    streamline.enabled = False
    gm, report = apply_plan(model, loaded, x)
    assert streamline.id in report.skipped and streamline.id not in report.applied
    assert "pool1" in dict(gm.named_modules())


def test_edited_geometry_that_breaks_shapes_is_refused():
    model = get_model("user_models:tiny_cnn")
    x = example_input(1, 3, 16)
    plan = make_plan(model, x)
    next(e for e in plan.entries if e.kind == "streamline").geometry["stride"] = [3, 3]
    with pytest.raises(PlanError, match="give .* but the merged run's output is"):
        apply_plan(model, plan, x)


def test_plan_that_does_not_match_the_model():
    plan = make_plan(get_model("bvlc_googlenet"), example_input(1, 3, 32))
    with pytest.raises(PlanError, match="has no layer"):
        apply_plan(get_model("user_models:tiny_cnn"), plan, example_input(1, 3, 32))


def test_plan_from_a_newer_version(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"version": PLAN_VERSION + 1, "entries": []}))
    with pytest.raises(PlanError, match="newer deeprebirth"):
        Plan.load(tmp_path / "p.json")
    (tmp_path / "q.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "q.json")


def test_parity_gate_reverts_a_broken_exact_merge(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(), nn.ReLU()).eval()
    x = example_input(1, 3, 8)
    plan = make_plan(model, x)
    merge = MERGES["drop_layer"]
    original_apply = merge.apply

    def broken_apply(gm, entry):
        original_apply(gm, entry)
        with torch.no_grad():
            gm.get_submodule("0").weight.mul_(2)

    monkeypatch.setattr(merge, "apply", broken_apply)
    gm, report = apply_plan(model, plan, x)
    assert [r[0] for r in report.reverted] == ["drop_layer:1"] and not report.applied
    torch.testing.assert_close(gm(x), model(x))


def test_save_and_load(tmp_path):
    model = get_model("user_models:tiny_cnn", num_classes=4)
    result = slimming.slim(
        model, name="user_models:tiny_cnn", input_size=16, model_config={"num_classes": 4}
    )
    with torch.no_grad():  # as tuning would, change the weights away from the base model's
        for p in result.model.parameters():
            p.add_(0.1)
    out = slimming.save(result, tmp_path / "slim")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plan.json"]
    loaded = slimming.load(out)
    x = example_input(2, 3, 16)
    torch.testing.assert_close(loaded(x), result.model(x))
    slimming.save(result, out)  # overwriting an existing directory works, leaves no debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"]


def test_save_into_an_unwritable_place(tmp_path):
    (tmp_path / "file").write_text("")
    result = slimming.slim(get_model("user_models:tiny_cnn"), input_size=16)
    with pytest.raises(DeepRebirthError, match="cannot write"):
        slimming.save(result, tmp_path / "file" / "slim")


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(DeepRebirthError, match="not a slimmed model directory"):
        slimming.load(tmp_path)
