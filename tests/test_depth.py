"""Depth compression: chains of convs as one conv (drop_activation, merge_convs)."""

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from deeprebirth import slimming
from deeprebirth.cli import main
from deeprebirth.graph import capture, example_input
from deeprebirth.plan import PlanError
from deeprebirth.planning import make_plan
from deeprebirth.transforms import MERGES, apply_plan
from deeprebirth.transforms.depth import choose_alternatives, compose_convs
from deeprebirth.zoo import get_model


@st.composite
def conv_chains(draw):
    """2-3 random convs (kernel, stride, groups, padding of the first) that chain."""
    channels = draw(st.sampled_from([2, 4, 6]))
    convs = []
    for i in range(draw(st.integers(2, 3))):
        out = draw(st.sampled_from([2, 4, 6]))
        groups = draw(st.sampled_from([g for g in (1, 2) if channels % g == 0 and out % g == 0]))
        if draw(st.booleans()) and out == channels:
            groups = channels  # depthwise
        convs.append(
            nn.Conv2d(
                channels,
                out,
                draw(st.sampled_from([1, 2, 3])),
                stride=draw(st.sampled_from([1, 2])),
                padding=draw(st.integers(0, 1)) if i == 0 else 0,
                groups=groups,
                bias=draw(st.booleans()),
            )
        )
        channels = out
    return convs


@settings(max_examples=40, deadline=None)
@given(convs=conv_chains(), size=st.integers(20, 28), residual=st.booleans())
def test_composed_chain_equals_the_chain_without_activations(convs, size, residual):
    x = torch.randn(2, convs[0].in_channels, size, size)
    y = x
    with torch.no_grad():
        for conv in convs:
            y = conv(y)
        merged = compose_convs(convs)
        # a residual folds in where the chain keeps the shape with a centred odd kernel
        k, p = merged.kernel_size, merged.padding
        if (
            residual
            and y.shape == x.shape
            and k[0] % 2
            and k[1] % 2
            and p == (k[0] // 2, k[1] // 2)
        ):
            y, merged = y + x, compose_convs(convs, residual=True)
        assert merged(x).shape == y.shape
        torch.testing.assert_close(merged(x), y, rtol=1e-4, atol=1e-5)
    depthwise = all(c.groups == c.in_channels == c.out_channels for c in convs)
    assert merged.groups == (convs[0].in_channels if depthwise else merged.groups)


@settings(max_examples=20, deadline=None)
@given(k=st.sampled_from([1, 3]), pad=st.integers(0, 1), residual=st.booleans())
def test_inner_padding_is_exact_away_from_the_borders(k, pad, residual):
    """1x1 -> 3x3 depthwise (padding 1, inside the chain) -> kxk: the merged conv pads the
    input instead; outputs agree wherever no padding was read."""
    c = 4
    convs = [nn.Conv2d(c, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, c, k)]
    convs[2].padding = (pad * (k // 2),) * 2
    x = torch.randn(1, c, 14, 14)
    with torch.no_grad():
        y = convs[2](convs[1](convs[0](x)))
        if residual and y.shape == x.shape:
            y = y + x
        merged = compose_convs(convs, residual=residual and y.shape == x.shape)
        out = merged(x)
    assert out.shape == y.shape
    b = 2  # how far the padding reaches in
    torch.testing.assert_close(out[..., b:-b, b:-b], y[..., b:-b, b:-b], rtol=1e-4, atol=1e-5)


def mobilenet():
    torch.manual_seed(0)
    return get_model("mobilenet_v2", num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def mobilenet_plan():
    """MobileNetV2 (1 channel) and its plan with depth merges at 32x32, the merged chains
    ending linear: planned once."""
    model = mobilenet()
    x = example_input(1, 1, 32)
    return model, make_plan(
        model, x, name="mobilenet_v2", drop_activations=True, end_activation=False
    )


def without_activations(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for name, module in list(m.named_modules()):
        if isinstance(module, nn.ReLU6):
            m.set_submodule(name, nn.Identity())
    return m


def test_mobilenet_v2_blocks_merge_whole_and_equal_the_activation_free_net(mobilenet_plan):
    """Each inverted-residual block becomes one conv (its residual folded in); with the
    activations gone the slimmed net computes what the original does without them, away
    from the borders, and saves the MACs the plan says."""
    model, plan = mobilenet_plan
    x = example_input(1, 1, 32)
    chains = [e for e in plan.entries if e.kind == "drop_activation"]
    enabled = [e for e in chains if e.enabled]
    assert enabled and all(e.macs_saved > 0 for e in enabled)
    assert any(e.geometry["residual"] for e in enabled)
    layers = [n for e in enabled for n in e.nodes]
    assert len(layers) == len(set(layers))  # enabled entries never share a layer
    assert any(not e.enabled and e.macs_saved < 0 for e in chains)  # the costly pairs stay off
    gm, report = apply_plan(model, plan, x)
    assert set(e.id for e in enabled) <= set(report.applied)
    with torch.no_grad():
        out, ref = gm(x), without_activations(model)(x)
    # every block's border effects mix into the global pool: compare loosely, and against
    # the network *with* activations, which must differ more
    with torch.no_grad():
        err_free = (out - ref).abs().max() / ref.abs().max()
        err_orig = (out - model(x)).abs().max() / model(x).abs().max()
    assert err_free < err_orig


def test_a_single_block_merges_exactly_inside():
    model = mobilenet()
    block = model.features[3]  # 24 -> 24 channels, stride 1: a residual block
    x = torch.randn(1, 24, 12, 12)
    plan = make_plan(block, x, name="block", drop_activations=True, end_activation=False)
    (entry,) = [e for e in plan.entries if e.kind == "drop_activation" and e.enabled]
    assert entry.geometry["residual"] and entry.geometry["kernel"] == [3, 3]
    gm, _ = apply_plan(block, plan, x)
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == 1
    with torch.no_grad():
        out, ref = gm(x), without_activations(block)(x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)


def test_an_end_activation_ends_a_merged_block_in_the_activation_it_dropped():
    """plan.end_activation: the block's one conv is followed by a fresh ReLU6 (not in place,
    not the original's module), and computes ReLU6 of the activation-free block inside."""
    model = mobilenet()
    block = model.features[3]
    x = torch.randn(1, 24, 12, 12)
    plan = make_plan(block, x, name="block", drop_activations=True, end_activation=True)
    (entry,) = [e for e in plan.entries if e.kind == "drop_activation" and e.enabled]
    assert entry.geometry["end_activation"] is True
    assert all(
        e.geometry.get("end_activation") for e in plan.entries if e.kind == "drop_activation"
    )
    gm, _ = apply_plan(block, plan, x)
    acts = [m for m in gm.modules() if isinstance(m, nn.ReLU6)]
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == 1
    assert len(acts) == 1 and not acts[0].inplace
    assert all(m.inplace for m in block.modules() if isinstance(m, nn.ReLU6))  # untouched
    with torch.no_grad():
        out, ref = gm(x), nn.functional.relu6(without_activations(block)(x))
    assert (out >= 0).all() and (out <= 6).all()
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)


def test_a_chain_an_activation_already_ends_gets_no_second_one():
    model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1), nn.ReLU()).eval()
    x = torch.randn(1, 4, 6, 6)
    plan = make_plan(model, x, drop_activations=True, end_activation=True)
    assert [e.enabled for e in plan.entries if e.kind == "drop_activation"] == [True]
    gm, _ = apply_plan(model, plan, x)
    assert [type(m) for m in gm.modules() if not isinstance(m, fx.GraphModule)] == [
        nn.Conv2d,
        nn.ReLU,
    ]
    torch.testing.assert_close(gm(x), torch.relu(without_relu(model)(x)))


def without_relu(model: nn.Module) -> nn.Module:
    return nn.Sequential(*[m for m in model if not isinstance(m, nn.ReLU)])


def test_a_conv_called_from_two_places_is_never_merged():
    """Shared weights: replacing the module would change its other call site."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return (self.b(torch.relu(self.a(x))) + self.a(2 * x)).mean((2, 3))

    model = Shared().eval()
    x = torch.randn(1, 8, 8, 8)
    plan = make_plan(model, x, drop_activations=True)
    assert not [e for e in plan.entries if e.kind in ("drop_activation", "merge_convs")]
    gm, _ = apply_plan(model, plan, x)
    torch.testing.assert_close(gm(x), model(x))


def test_choose_alternatives_never_overlaps():
    from deeprebirth.plan.plan import PlanEntry

    def entry(name, nodes, saved):
        return PlanEntry(name, "drop_activation", False, nodes, macs_saved=saved)

    es = [entry("ab", ["a", "b"], 5), entry("bc", ["b", "c"], 7), entry("cd", ["c", "d"], 4)]
    es.append(entry("de", ["d", "e"], -1))
    choose_alternatives(es)
    assert [e.enabled for e in es] == [True, False, True, False]


def test_a_plan_that_no_longer_fits_is_refused(mobilenet_plan):
    model, plan = mobilenet_plan
    entry = next(e for e in plan.entries if e.kind == "drop_activation" and e.enabled)
    gm = capture(model)
    other = copy.deepcopy(entry)
    other.nodes = [other.nodes[0], "no.such.layer", *other.nodes[2:]]
    with pytest.raises(PlanError, match="expected no.such.layer"):
        MERGES[other.kind].apply(gm, other)


def test_a_merged_chain_is_one_tuning_stage(mobilenet_plan):
    from deeprebirth.tuning import find_stages

    model, plan = mobilenet_plan
    result = slimming.slim(model, plan)
    stages = find_stages(
        result.plan, result.report.applied, capture(model), result.model, torch.zeros(1, 1, 32, 32)
    )
    merged = [e.nodes[0] for e in result.plan.entries if e.kind == "drop_activation" and e.enabled]
    trained = [t for s in stages for t in s.trainable]
    assert set(merged) <= set(trained)


@pytest.mark.parametrize("end", [False, True])
def test_cli_slims_and_exports_with_depth_merges(capsys, tmp_path, end):
    name = "mobilenet_v2"
    args = ["--input-size", "32", "--in-chans", "1", "--drop-activations"]
    args += [] if end else ["--linear-chain-ends"]  # ending in an activation: the default
    code = main(["slim", name, *args, "--no-report", "--out", str(tmp_path / "s")])
    _, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    chains = [e for e in plan["entries"] if e["kind"] == "drop_activation" and e["enabled"]]
    assert chains and all(e["geometry"].get("end_activation", False) is end for e in chains)
    loaded = slimming.load(tmp_path / "s")  # the plan replays with the ends in place
    ends = [n for n, m in loaded.named_modules() if n.endswith("_end")]
    assert len(ends) == (len(chains) if end else 0)
    code = main(["export", str(tmp_path / "s"), "-o", str(tmp_path / "s.onnx")])
    _, err = capsys.readouterr()
    assert code == 0, err  # the ONNX file matches the slimmed model (parity gate)


def test_depth_chains_are_budget_options(mobilenet_plan):
    """Chains that share a layer are one group of non-overlapping sets; Tucker on a conv a
    chain takes joins the chain's group; with_entries turns on only the chosen chains."""
    from deeprebirth.planning.select import build_options, depth_options, with_entries

    model, plan = mobilenet_plan
    depth = [e for e in plan.entries if e.kind in ("drop_activation", "merge_convs")]
    options = depth_options([e for e in depth if e.macs_saved > 0])
    assert options and all(o.entries for o in options)
    for o in options:
        layers = [n for e in o.entries for n in e.nodes]
        assert len(layers) == len(set(layers))
    by_group = {}
    for o in options:
        by_group.setdefault(o.group, set()).update(n for e in o.entries for n in e.nodes)
    groups = list(by_group.values())
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1 :])
    one = options[0]
    enabled = {e.id for e in with_entries(plan, one.entries).entries if e.enabled}
    assert {e.id for e in one.entries} <= enabled
    assert not ({e.id for e in depth} - {e.id for e in one.entries}) & enabled
    x = example_input(1, 1, 32)
    tucker = make_plan(
        model, x, name="mobilenet_v2", tucker=True, rank_ratio=0.5, pointwise_rank_ratio=0.5
    )
    all_options = build_options(model, x, plan, [tucker])
    group_of = {n: o.group for o in options for e in o.entries for n in e.nodes}
    tucker_options = [o for o in all_options if o.entries[0].kind == "tucker"]
    on_chains = [o for o in tucker_options if o.entries[0].nodes[0] in group_of]
    # Tucker on a chained conv is one more option of that chain's group: one or the other
    assert on_chains and all(o.group == group_of[o.entries[0].nodes[0]] for o in on_chains)


def test_a_latency_budget_offers_depth_merges(capsys, tmp_path):
    args = ["slim", "user_models:mbv2_block", "--input-size", "16", "--drop-activations"]
    code = main(
        [*args, "--selection-runs", "3", "--latency-budget", "1e6", "--no-report"]
        + ["--out", str(tmp_path / "s")]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    sel = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert any(o["entries"][0].startswith("drop_activation:") for o in sel["options"])


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf"])
def test_batch_norm_era_nets_plan_slim_and_export_with_depth_merges(name, tmp_path):
    from deeprebirth.export.check import export
    from deeprebirth.transforms import PARITY_TOLERANCE, relative_error

    model = get_model(name, num_classes=10).eval()
    x = example_input(2, 3, 32)
    result = slimming.slim(
        model, name=name, input_size=32, model_config={"num_classes": 10}, drop_activations=True
    )
    chains = [e for e in result.plan.entries if e.kind in ("drop_activation", "merge_convs")]
    assert any(e.id in result.report.applied for e in chains)  # depth merges found and applied
    assert not result.report.reverted
    exact, _ = apply_plan(model, result.plan, x, exact_only=True)  # the exact-only result
    with torch.no_grad():
        assert relative_error(exact(x), model(x)) < 10 * PARITY_TOLERANCE
    report = export(result.model, tmp_path / "m.onnx", "onnx", x)  # parity-gated in ORT
    assert report["relative_error"] < PARITY_TOLERANCE
