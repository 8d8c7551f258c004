import statistics

import pytest
import torch
from torch import nn

from deeprebirth import get_model
from deeprebirth.graph import capture
from deeprebirth.planning import blocks as blocks_module
from deeprebirth.planning.blocks import BlockLatency, cut_nodes, fit_beyond, split
from deeprebirth.profiling.timing import Timing


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def tiny_resnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        Residual(8),
        Residual(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def test_cuts_are_where_only_one_tensor_is_live():
    gm = capture(tiny_resnet())
    cuts = cut_nodes(gm)
    names = [n.name for n in gm.graph.nodes]
    # inside a residual block the input stays live until the sum: no cut there
    inside = [n for n in names if n.startswith("_2_conv") or n.startswith("_3_conv")]
    assert inside and not set(inside) & set(cuts)
    # not between a layer and the activation a runtime fuses into it
    assert "_0" not in cuts and "_1" in cuts and cuts[-1] == names[-2]


def test_int8_blocks_are_not_cut_after_a_max_pool_and_run_from_random_tensors():
    gm = capture(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 1)))
    pool = next(n.name for n in gm.graph.nodes if n.target == "2")
    assert pool in cut_nodes(gm) and pool not in cut_nodes(gm, after_max_pools=False)
    latency = BlockLatency(runtime="ort-int8", use_cache=False)
    assert latency.quantized and not BlockLatency(runtime="ort", use_cache=False).quantized
    x = torch.randn(1, 3, 16, 16)
    assert latency._cut_keys(gm, x).keys() == {"_1", "_3"}  # the ReLU and the last conv
    zeros, noise = split(gm, x, [pool]), split(gm, x, [pool], random_inputs=True)
    assert not zeros[1].input.any() and noise[1].input.std() > 0.5
    torch.testing.assert_close(noise[1].input, split(gm, x, [pool], random_inputs=True)[1].input)
    assert noise[0].input is x


@pytest.mark.parametrize("name", ["tiny", "bvlc_googlenet"])
def test_blocks_run_one_after_another_are_the_network(name):
    torch.manual_seed(0)
    model = tiny_resnet() if name == "tiny" else get_model(name, num_classes=10, in_chans=1)
    gm = capture(model.eval())
    x = torch.randn(1, 3 if name == "tiny" else 1, 32, 32)
    parts = split(gm, x, cut_nodes(gm))
    assert len(parts) > 3
    y = x
    with torch.no_grad():
        for b in parts:
            assert b.input.shape == y.shape
            y = b.module(y)
        torch.testing.assert_close(y, gm(x))


class InPlace(nn.Module):
    """Layers that work in place on what the layer before them made."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act = nn.Conv2d(3, 4, 1), nn.ELU(inplace=True)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv1(x)
        x += 1.0
        x = self.act(x.relu_())
        x = torch.nn.functional.relu(self.conv2(x), inplace=True)
        x = self.conv3(x)
        return x.mul_(2.0)


def test_a_block_does_not_write_into_its_input():
    torch.manual_seed(0)
    gm = capture(InPlace().eval())
    x = torch.randn(1, 3, 8, 8)
    parts = split(gm, x, cut_nodes(gm))
    firsts = [next(n for n in b.module.graph.nodes if n.op != "placeholder") for b in parts]
    # blocks that start in place: +=, relu_(), an in-place module, mul_()
    assert len([n for n in firsts if n.op != "call_module" or n.target == "act"]) >= 4
    y = x
    with torch.no_grad():
        for b in parts:
            given = torch.randn_like(y) if b.start else y  # (the first reads the net's own)
            kept = given.clone()
            b.module(given)
            torch.testing.assert_close(given, kept)  # the block's input is as it was
            y = b.module(y)
        torch.testing.assert_close(y, gm(x))
    assert gm.get_submodule("act").inplace  # the network's own layer is untouched


def test_cuts_match_by_name_and_shape():
    """A depth chain's merged conv keeps its first conv's name: in the base that node is the
    wide expansion, in the option the chain's narrow output, not a cut the two share."""
    torch.manual_seed(0)
    base = capture(InPlace().eval())
    other = capture(InPlace().eval())
    x = torch.randn(1, 3, 8, 8)
    first = cut_nodes(other)[0]
    assert first == "conv1"
    other.conv1, other.conv2 = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)  # the name, another shape
    assert first in set(cut_nodes(base)) & set(cut_nodes(other))
    cuts, found = blocks_module._cut_keys(base, x), blocks_module._cut_keys(other, x)
    # conv1 and what follows it up to conv2 have other shapes; from conv2's relu on the same
    shared = [c for c, keys in cuts.items() if blocks_module._find(keys, found) == c]
    assert first not in shared and shared == list(cuts)[list(cuts).index("relu") :]


def test_a_cut_is_found_by_its_reader_where_a_merge_took_its_node():
    torch.manual_seed(0)
    base = capture(InPlace().eval())
    other = capture(InPlace().eval())
    x = torch.randn(1, 3, 8, 8)
    relu = next(n for n in other.graph.nodes if n.name == "relu")
    relu.name = "merged"  # the same place, another name
    other.recompile()
    cuts, found = blocks_module._cut_keys(base, x), blocks_module._cut_keys(other, x)
    assert "relu" not in found and blocks_module._find(cuts["relu"], found) == "merged"


class Heads(nn.Module):
    """Two 1x1 heads, fused into one conv and split (as the branch merge leaves them) or not."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.conv = nn.Conv2d(4, 8, 1)
        else:
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if self.fused:
            parts = torch.split(self.conv(x), [4, 4], dim=1)
            a, b = parts[0], parts[1]
        else:
            a, b = self.a(x), self.b(x)
        return torch.cat([torch.relu(a), torch.relu(b)], 1)


class TwoModules(nn.Module):
    def __init__(self, first_fused: bool):
        super().__init__()
        self.stem, self.h1 = nn.Conv2d(3, 4, 1), Heads(first_fused)
        self.mid, self.h2 = nn.Conv2d(8, 4, 1), Heads(True)

    def forward(self, x):
        return self.h2(self.mid(self.h1(self.stem(x))))


def test_a_cut_is_not_found_by_a_functions_numbered_name():
    """Without the first module's fused heads, the second module's split is fx's ``split``,
    the name the first one's has in the base, at the same shape: not the same cut."""
    base, other = capture(TwoModules(True).eval()), capture(TwoModules(False).eval())
    x = torch.randn(1, 3, 8, 8)
    cuts, found = blocks_module._cut_keys(base, x), blocks_module._cut_keys(other, x)
    assert {"h1_conv", "h2_conv"} <= cuts.keys() and "h2_conv" in found
    assert blocks_module._find(cuts["h1_conv"], found) is None
    assert blocks_module._find(cuts["h2_conv"], found) == "h2_conv"
    # the blocks of the other form end at the cuts it shares, in graph order
    latency = BlockLatency()
    latency.cut_keys = cuts
    ends = [b.end for b in latency._split(other, x, list(cuts))[0]]
    assert "h1_conv" not in ends and ends == sorted(ends, key=list(found).index)


def test_a_blocks_key_is_its_structure_not_its_names_or_weights():
    torch.manual_seed(0)
    a, b = capture(tiny_resnet()), capture(tiny_resnet())
    x = torch.randn(1, 3, 16, 16)
    ka = [p.key for p in split(a, x, cut_nodes(a))]
    kb = [p.key for p in split(b, x, cut_nodes(b))]
    assert ka == kb  # other weights, same structure
    assert ka[1] == ka[2]  # the two residual blocks (each its own block): same layers
    wider = capture(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()))
    assert split(wider, x, [])[0].key != split(capture(tiny_resnet()[:2]), x, [])[0].key
    assert [p.key for p in split(a, torch.randn(1, 3, 8, 8), cut_nodes(a))] != ka


def fake_latencies(models, *, runtimes, **kwargs):
    """Latency proportional to the parameters (ms = 1 per 1000), plus 0.05 ms per call."""
    ms = {k: sum(p.numel() for p in m.parameters()) / 1000 + 0.05 for k, (m, _) in models.items()}
    return {runtimes[0]: {k: Timing(v, v, v, 1) for k, v in ms.items()}}


def test_predicted_latency_is_the_blocks_sum_plus_what_lies_between(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(blocks_module, "latencies", fake_latencies)
    torch.manual_seed(0)
    base = capture(tiny_resnet())
    x = torch.randn(1, 3, 16, 16)
    slim = tiny_resnet()
    slim[3] = nn.Identity()  # an option that takes the second residual block away
    other = capture(slim)
    pairs = []

    def recording(models, **kwargs):
        pairs.append(kwargs["beside"])
        return fake_latencies(models, **kwargs)

    monkeypatch.setattr(blocks_module, "latencies", recording)
    model = BlockLatency(runtime="ort")
    model.fit(base, [other], x)
    # the residual block the option removes is its own block; the rest is one block each side
    assert len(model.base) == 3
    # its new form is timed beside the block it replaces
    form = next(b.key for b in model.split(other, x) if b.key not in {r.key for r in model.base})
    assert pairs == [{form: model.base[1].key}]
    whole = fake_latencies({"m": (base, x)}, runtimes=["ort"])["ort"]["m"].median_ms
    assert model.base_ms == pytest.approx(whole)
    predicted, rows = model.predict(base, x)
    assert predicted == pytest.approx(whole) and len(rows) == 3
    predicted, _ = model.predict(other, x)
    removed = sum(p.numel() for p in tiny_resnet()[3].parameters()) / 1000
    assert predicted == pytest.approx(whole - removed, abs=0.051)
    # the table is cached: a new model times nothing it has seen
    monkeypatch.setattr(blocks_module, "latencies", None)
    again = BlockLatency(runtime="ort")
    assert set(model.table) <= set(again.table)


def test_a_block_reads_a_weight_that_lies_in_a_submodule():
    class Scaled(nn.Module):  # a layer scale read as a bare tensor (timm's FastViT)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.scale = nn.Module()
            self.scale.gamma = nn.Parameter(torch.full((1, 3, 1, 1), 0.5))

        def forward(self, x):
            return torch.relu(self.conv(x) * self.scale.gamma)

    gm = capture(nn.Sequential(Scaled(), Scaled()).eval())
    assert any(n.op == "get_attr" and "." in n.target for n in gm.graph.nodes)
    x = torch.randn(1, 3, 4, 4)
    parts = split(gm, x, cut_nodes(gm))
    keys = [b.key for b in parts]
    assert len(parts) == 4 and keys[:2] == keys[2:]  # the two layers' blocks: same structure
    y = x
    for b in parts:
        y = b.module(y)
    torch.testing.assert_close(y, gm(x))


def test_what_a_whole_network_takes_beyond_its_blocks_is_fitted_on_its_weights(
    monkeypatch, tmp_path
):
    """A whole network whose weights cost more than in its blocks alone (evicted by the
    other blocks', they come from farther away): a constant alone would predict a plan with
    fewer weights too slow; the constant and price per MB fitted on whole networks not."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def whole_slower(factor):  # a whole network: factor x its weights' share, + 0.2 ms
        def timed(models, **kwargs):
            t = fake_latencies(models, **kwargs)
            for k, v in t[kwargs["runtimes"][0]].items():
                if k.startswith("<"):  # the base and the plans: whole networks
                    ms = factor * (v.median_ms - 0.05) + 0.2
                    t[kwargs["runtimes"][0]][k] = Timing(ms, ms, ms, 1)
            return t

        return timed

    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    base = capture(tiny_resnet())
    slim = tiny_resnet()
    slim[3] = nn.Identity()
    other = capture(slim)
    monkeypatch.setattr(blocks_module, "latencies", whole_slower(1.5))
    model = BlockLatency(runtime="ort", use_cache=False)
    model.fit(base, [other], x)
    whole_other = 1.5 * sum(p.numel() for p in slim.parameters()) / 1000 + 0.2
    before, _ = model.predict(other, x)  # the base's constant: too slow
    assert before > 1.05 * whole_other
    rows = model.calibrate([other], x)
    # 0.5 ms more per 1000 float weights: 125 ms per MB
    assert model.ms_per_mb == pytest.approx(125.0)
    assert model.predict(other, x)[0] == pytest.approx(whole_other)
    assert [r["measured_ms"] for r in rows] == pytest.approx([model.base_ms, whole_other])
    assert [r["predicted_ms"] for r in rows] == pytest.approx([model.base_ms, whole_other])
    assert model.calibration == rows and model.calibration_miss == pytest.approx(0.0, abs=1e-9)
    # timed whole in as many sessions as fit in CALIBRATION_SECONDS, 3 to 9
    assert model.calibration_sessions == blocks_module.CALIBRATION_SESSIONS == 9
    model.base_ms = 10_000.0  # a base of 10 s: 3 sessions
    model.calibrate([other], x)
    assert model.calibration_sessions == blocks_module.SESSIONS == 3
    # weights that make a network faster are noise: priced at 0, the mean constant kept
    monkeypatch.setattr(blocks_module, "latencies", whole_slower(0.5))
    logged = []
    model = BlockLatency(runtime="ort", use_cache=False, log=logged.append)
    model.fit(base, [other], x)
    rows = model.calibrate([other], x)
    assert model.ms_per_mb == 0.0 and any("taken as 0" in m for m in logged)
    # the constant: the mean beyond the blocks, weighted as the relative errors are
    misses = [(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] ** 2 for r in rows]
    assert sum(misses) == pytest.approx(0.0, abs=1e-9) and misses[0] != 0
    assert model.calibration_miss > 0
    model.fit(base, [other], x)  # fitted again: calibrated on nothing yet
    assert model.calibration == [] and model.calibration_miss == 0.0
    with pytest.raises(RuntimeError, match="fit"):
        BlockLatency(runtime="ort", use_cache=False).calibrate([other], x)


def test_fit_beyond_weighs_relative_errors():
    # the trained GoogLeNet at 64x64 in int8, as one exploratory calibration measured it: the
    # base, two slow plans (with LRN) and two fast ones; MB of weights, the blocks' sum,
    # measured whole (ms)
    mbs, sums = [23.9, 20.6, 12.0, 18.5, 19.9], [2.941, 2.776, 0.371, 0.641, 0.725]
    measured = [3.021, 2.853, 0.340, 0.584, 0.699]

    def worst(per_mb, constant):
        return max(
            abs((constant + x + per_mb * w) / y - 1)
            for w, x, y in zip(mbs, sums, measured, strict=True)
        )

    per_mb, constant = fit_beyond(mbs, sums, measured)
    beyond = [y - x for x, y in zip(sums, measured, strict=True)]
    plain = statistics.linear_regression(mbs, beyond)
    assert worst(plain.slope, plain.intercept) > 0.10  # unweighted: a fast plan 10% off
    assert worst(per_mb, constant) < 0.05
    assert worst(per_mb, constant) < worst(plain.slope, plain.intercept)
    # all networks alike in weights: the constant alone
    assert fit_beyond([5.0, 5.0], [1.0, 2.0], [1.1, 2.2]) == (
        0.0,
        pytest.approx((0.1 / 1.21 + 0.2 / 4.84) / (1 / 1.21 + 1 / 4.84)),
    )
