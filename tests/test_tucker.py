import numpy as np
import pytest
import torch
from torch import nn

from deeprebirth.errors import DeepRebirthError
from deeprebirth.graph import capture, example_input
from deeprebirth.planning import make_plan
from deeprebirth.slimming import slim
from deeprebirth.transforms.tucker import evbmf_rank, tucker2_layers, tucker_ranks
from deeprebirth.tuning import find_stages
from deeprebirth.zoo import get_model


@pytest.mark.parametrize(
    "shape, rank, noise", [((50, 80), 5, 0.1), ((64, 576), 12, 0.05), ((100, 40), 8, 0.1)]
)
def test_evbmf_finds_the_known_rank(shape, rank, noise):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    assert evbmf_rank(y + noise * rng.normal(size=shape)) == rank


def test_evbmf_keeps_nothing_of_pure_noise():
    assert evbmf_rank(np.random.default_rng(1).normal(size=(40, 60))) == 0


def test_tucker_full_rank_is_exact_and_reduced_rank_is_bounded():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 11, 11)
    torch.testing.assert_close(tucker2_layers(conv, (8, 6))(x), conv(x), rtol=1e-4, atol=1e-5)
    errors = []
    for ranks in [(2, 2), (4, 3), (6, 5)]:
        with torch.no_grad():
            y = tucker2_layers(conv, ranks)(x)
        errors.append(((y - conv(x)).norm() / conv(x).norm()).item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.6 and errors[0] < 1.0


@pytest.mark.parametrize("stride", [1, 2])
def test_1x1_conv_becomes_two_layers_exact_at_full_rank_optimal_below(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 8, 1, stride=stride)
    x = torch.randn(2, 12, 9, 9)
    full = tucker2_layers(conv, (8, 12))
    assert len(full) == 2 and full[0].out_channels == 8 and full[0].stride == (stride, stride)
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-5)
    low = tucker2_layers(conv, (3, 3))
    assert [m.weight.shape[:2] for m in low] == [(3, 12), (8, 3)]
    # rank 3 of the weight matrix: the truncated SVD is the best approximation there is
    w = conv.weight[:, :, 0, 0].detach()
    u, s, vh = torch.linalg.svd(w)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    got = (low[1].weight[:, :, 0, 0] @ low[0].weight[:, :, 0, 0]).detach()
    torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-5)


def test_rank_larger_than_the_layer_allows():
    with pytest.raises(DeepRebirthError, match="do not fit a conv with 8 outputs"):
        tucker2_layers(nn.Conv2d(6, 8, 3), (9, 6))
    with pytest.raises(DeepRebirthError, match="rank ratio"):
        tucker_ranks(torch.zeros(8, 6, 3, 3), rank_ratio=1.5)


def test_slim_with_tucker_plans_decomposes_and_tunes():
    model = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    result = slim(
        model, input_size=32, in_chans=1, tucker=True, rank_ratio=0.25, pointwise_rank_ratio=0.25
    )
    tucker = [e for e in result.plan.entries if e.kind == "tucker"]
    assert tucker and all(e.id in result.report.applied for e in tucker)
    assert all(e.macs_saved > 0 for e in tucker)
    x = example_input(2, 1, 32)
    with torch.no_grad():
        assert result.model(x).shape == (2, 10)
    name = next(e.nodes[0] for e in tucker if e.geometry["layers"] == 3)
    assert [type(m) for m in result.model.get_submodule(name)] == [nn.Conv2d] * 3
    pointwise = [e for e in tucker if e.geometry["layers"] == 2]  # the fused 1x1 heads among them
    assert pointwise and all(len(result.model.get_submodule(e.nodes[0])) == 2 for e in pointwise)
    stages = find_stages(result.plan, result.report.applied, capture(model), result.model, x[:1])
    assert any(name + ".1" in s.trainable for s in stages)
    assert any(pointwise[0].nodes[0] + ".1" in s.trainable for s in stages)


def test_1x1_convs_are_left_alone_without_a_pointwise_rank_ratio():
    model = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    plan = make_plan(model, example_input(1, 1, 32), tucker=True, rank_ratio=0.25)
    tucker = [e for e in plan.entries if e.kind == "tucker"]
    assert tucker and all(e.geometry["layers"] == 3 for e in tucker)


def test_decompositions_are_reused_only_for_the_same_weights_and_ranks():
    from deeprebirth.transforms import tucker

    tucker._FACTORS.clear()
    conv = nn.Conv2d(8, 8, 3)
    first = tucker.tucker2_layers(conv, (4, 4))
    again = tucker.tucker2_layers(conv, (4, 4))
    assert len(tucker._FACTORS) == 1
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(first, again, strict=True))
    tucker.tucker2_layers(conv, (2, 2))
    with torch.no_grad():
        conv.weight.mul_(2)  # changed in place: a new decomposition, not the cached one
    changed = tucker.tucker2_layers(conv, (4, 4))
    assert len(tucker._FACTORS) == 3
    assert not torch.equal(changed[1].weight, first[1].weight)
