import itertools
import json

import pytest
import torch
from torch import nn

from deeprebirth.errors import DeepRebirthError
from deeprebirth.graph import capture
from deeprebirth.profiling import (
    bench,
    count_macs,
    count_params,
    measure_interleaved,
    peak_activation_bytes,
    plot_profile,
    profile,
)
from deeprebirth.zoo import get_model


@pytest.fixture(scope="module")
def tiny_profile():
    return profile(
        get_model("user_models:tiny_cnn"),
        name="tiny",
        input_size=16,
        runs=3,
        warmup=1,
        layer_runs=3,
    )


def test_profile_json_schema(tiny_profile, tmp_path):
    r = json.loads(json.dumps(tiny_profile))  # JSON-serialisable
    for key in ("model", "runtimes", "macs", "params", "peak_activation_mb", "machine"):
        assert key in r
    assert set(r["runtimes"]) == {"torch", "ort"}
    for data in r["runtimes"].values():
        assert data["latency_ms"] > 0 and data["latency"]["runs"] == 3
        assert 0 <= data["non_tensor_share"] <= 1
        assert sum(v["share"] for v in data["by_kind"].values()) == pytest.approx(1.0)
        assert {"conv", "pool", "lrn"} <= set(data["by_kind"])
        assert data["layers"] and all(layer["ms"] >= 0 for layer in data["layers"])


def test_profile_layers_follow_the_graph(tiny_profile):
    layers = tiny_profile["runtimes"]["torch"]["layers"]
    names = [layer["name"] for layer in layers]
    assert names[:4] == ["conv1", "relu1", "pool1", "norm1"]
    kinds = {layer["name"]: layer["kind"] for layer in layers}
    assert kinds["cat"] == "concat" and kinds["fc"] == "fc" and kinds["norm1"] == "lrn"
    ort_ops = {layer["op"] for layer in tiny_profile["runtimes"]["ort"]["layers"]}
    assert "LRN" in ort_ops


def test_plot_is_written(tiny_profile, tmp_path):
    path = plot_profile(tiny_profile, tmp_path / "sub" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_macs_and_params_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.randn(1, 3, 16, 16)) == 8 * 16 * 16 * 3 * 9
    assert count_params(conv) == 8 * 3 * 9 + 8
    fc = nn.Linear(10, 4)
    assert count_macs(fc, torch.randn(2, 10)) == 2 * 10 * 4


@pytest.mark.parametrize("inplace, expected", [(True, 768 + 2048), (False, 2048 + 2048)])
def test_peak_activation_memory_by_hand(inplace, expected):
    # input 1x3x8x8 fp32 = 768 B; conv out 1x8x8x8 = 2048 B; pool out 1x8x4x4 = 512 B.
    # In-place ReLU shares the conv's storage, so the peak is input + conv output;
    # an out-of-place ReLU holds conv output and ReLU output at once.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2))
    assert peak_activation_bytes(capture(model), torch.randn(1, 3, 8, 8)) == expected


def test_peak_activation_memory_of_a_branch_block():
    # Both branch outputs and the block input are live when the concat runs.
    model = get_model("user_models:tiny_cnn")
    gm = capture(model)
    peak = peak_activation_bytes(gm, torch.randn(1, 3, 16, 16))
    # conv1 out: 8x16x16 fp32 = 8192 B plus the input (3x16x16 = 3072 B) is the largest pair.
    assert peak == 8192 + 3072


def test_measure_interleaved_returns_each():
    timings = measure_interleaved(
        {"a": lambda: None, "b": lambda: sum(range(100))}, runs=5, warmup=1
    )
    assert set(timings) == {"a", "b"} and all(t.runs == 5 for t in timings.values())


def test_interleaved_runs_come_in_a_row_the_first_untimed():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "ab"}
    timings = measure_interleaved(fns, runs=5, warmup=0, in_a_row=4)
    assert all(t.runs == 5 for t in timings.values())
    # rounds of 3 timed runs, then 2: each turn is one untimed run and the timed ones
    turns = ["".join(g) for _, g in itertools.groupby(calls)]
    assert sorted(map(len, turns)) == [3, 3, 4, 4] and len(calls) == 14
    calls.clear()
    measure_interleaved(fns, runs=5, warmup=0, in_a_row=1)
    assert len(calls) == 10


def test_no_turn_comes_straight_after_its_own():
    # a turn after its own finds its weights in the caches: it would time fast
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "ab"}
    measure_interleaved(fns, runs=30, warmup=0, in_a_row=4)
    turns = ["".join(g) for _, g in itertools.groupby(calls)]
    assert len(turns) == 20 and all(len(t) == 4 for t in turns)


def test_the_reference_leads_every_other_session(monkeypatch):
    import deeprebirth.profiling.bench as bench
    from deeprebirth.profiling.timing import Timing

    leaders = []

    def measure_interleaved(fns, runs, warmup, in_a_row=1):
        leaders.append(next(iter(fns)))
        return {k: Timing(1.0, 1.0, 1.0, runs) for k in fns}

    monkeypatch.setattr(bench, "measure_interleaved", measure_interleaved)
    calls = {"ref": [lambda: None] * 4, "a": [lambda: None] * 4}
    bench._measure_sessions(calls, runs=3, warmup=0, beside={"a": "ref"})
    assert leaders == ["ref", "model", "ref", "model"]


def test_several_sessions_report_the_median_of_their_medians():
    from deeprebirth.profiling.bench import latencies
    from deeprebirth.profiling.timing import Timing

    t = [Timing(m, m - 1, m + 1, 4) for m in (3.0, 1.0, 2.0)]
    assert Timing.of_sessions(t) == Timing(2.0, 1.0, 3.0, 12)
    assert Timing.of_sessions(t[:1]) == t[0]
    x = torch.randn(1, 3, 16, 16)
    out = latencies({"conv": (nn.Conv2d(3, 4, 3), x)}, runtimes=["ort"], runs=3, sessions=2)
    assert out["ort"]["conv"].runs == 6
    with pytest.raises(Exception, match="sessions must be at least 1"):
        latencies({"conv": (nn.Conv2d(3, 4, 3), x)}, runtimes=["ort"], sessions=0)


def test_models_timed_beside_one_run_in_pairs_scaled_by_it(monkeypatch):
    import deeprebirth.profiling.bench as bench
    from deeprebirth.profiling.timing import Timing

    # The reference runs 1 ms beside "a" and 2 ms beside "b" (the machine slowed down):
    # each is scaled to the reference's median over the pairs, 1.5 ms.
    ms = {("ref", "a"): 1.0, ("ref", "b"): 2.0, "a": 1.5, "b": 3.0}
    sizes = []

    def measure_interleaved(fns, runs, warmup, in_a_row=1):
        sizes.append(len(fns))
        other = fns["model"].__name__
        t = {"ref": ms["ref", other], "model": ms[other]}
        return {k: Timing(v, v, v, runs) for k, v in t.items()}

    def call(name):
        def fn():
            return None

        fn.__name__ = name
        return fn

    monkeypatch.setattr(bench, "measure_interleaved", measure_interleaved)
    calls = {"ref": [call("ref")], "a": [call("a")], "b": [call("b")]}
    t = bench._measure_sessions(calls, runs=4, warmup=1, beside={"a": "ref", "b": "ref"})
    assert sizes == [2, 2]  # two models touched at a time, never all three
    assert t["ref"].median_ms == pytest.approx(1.5)
    assert t["a"].median_ms == pytest.approx(2.25) and t["b"].median_ms == pytest.approx(2.25)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(Exception, match="beside: 'nope' is not one of the models"):
        bench.latencies({"conv": (nn.Conv2d(3, 4, 3), x)}, runtimes=["torch"], beside="nope")


def test_each_model_can_have_its_own_reference():
    from deeprebirth.profiling.bench import latencies

    x = torch.randn(1, 3, 16, 16)
    convs = {k: (nn.Conv2d(3, c, 3), x) for k, c in (("r1", 4), ("a", 8), ("r2", 4), ("lone", 2))}
    out = latencies(convs, runtimes=["ort"], runs=3, sessions=2, beside={"a": "r1"})["ort"]
    # r2 and lone are references no model is beside: timed alone
    assert set(out) == set(convs) and all(t.median_ms > 0 for t in out.values())
    with pytest.raises(Exception, match="'r1' is a reference beside another"):
        latencies(convs, runtimes=["ort"], beside={"a": "r1", "r1": "r2"})


def test_timing_beside_a_model_runs_every_runtime():
    from deeprebirth.profiling.bench import latencies

    x = torch.randn(1, 3, 16, 16)
    models = {"a": (nn.Conv2d(3, 4, 3), x), "b": (nn.Conv2d(3, 8, 3), x)}
    for runtime in ("torch", "ort"):
        out = latencies(models, runtimes=[runtime], runs=3, sessions=2, beside="a")[runtime]
        assert set(out) == {"a", "b"} and all(t.median_ms > 0 for t in out.values())


def test_unknown_runtime():
    with pytest.raises(ValueError, match="unknown runtime"):
        profile(nn.Conv2d(3, 3, 1), runtimes=["tflite"])
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(DeepRebirthError, match="unknown runtime 'tflite'; choose from"):
        bench.latencies({"a": (nn.Conv2d(3, 3, 1), x)}, runtimes=["tflite"])


def test_an_int8_profile_counts_int8_kernels_by_layer_kind():
    r = profile(
        get_model("user_models:tiny_cnn"),
        runtimes=["ort-int8"],
        input_size=16,
        runs=2,
        warmup=1,
        layer_runs=2,
    )["runtimes"]["ort-int8"]
    ops = {row["op"]: row["kind"] for row in r["layers"]}
    assert ops["QLinearConv"] == "conv" and ops["QuantizeLinear"] == "quantize"
    assert "other" not in r["by_kind"] and r["latency_ms"] > 0


def test_int8_timing_runs_each_model_quantized_its_output_too(monkeypatch):
    quantized = []

    def int8_to_time(proto, example):
        quantized.append(real(proto, example))
        return quantized[-1]

    real = bench.int8_to_time
    monkeypatch.setattr(bench, "int8_to_time", int8_to_time)
    x = torch.randn(1, 3, 16, 16)
    models = {"a": (nn.Conv2d(3, 4, 3), x), "b": (nn.Conv2d(3, 8, 3), x)}
    out = bench.latencies(models, runtimes=["ort-int8"], runs=3, beside="a")["ort-int8"]
    assert set(out) == {"a", "b"} and all(t.median_ms > 0 for t in out.values())
    assert len(quantized) == 2
    for proto in quantized:
        made = {o: n for n in proto.graph.node for o in n.output}
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        assert made[conv.input[0]].op_type == "DequantizeLinear"  # it reads int8
        # ... and writes int8: the output stays quantized, as a block's does in a network
        dq = made[proto.graph.output[0].name]
        assert dq.op_type == "DequantizeLinear" and made[dq.input[0]].op_type == "QuantizeLinear"
        assert made[dq.input[0]].input[0] == conv.output[0]


def test_profiling_gives_the_caller_its_threads_back():
    import torch

    from deeprebirth import get_model
    from deeprebirth.profiling import profile

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = get_model("user_models:tiny_cnn")
        profile(model, runtimes=["torch"], input_size=16, runs=2, threads=1)
        assert torch.get_num_threads() == 2  # tuning after a profile runs on all of them
    finally:
        torch.set_num_threads(before)
