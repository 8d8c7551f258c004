"""ExecuTorch (XNNPACK): export, load back, parity, int8, the LRN rewrite, the CLI."""

import builtins
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from deeprebirth import get_model
from deeprebirth.cli import main
from deeprebirth.errors import DeepRebirthError
from deeprebirth.export import PteModel, export_executorch
from deeprebirth.export.executorch import BandedLRN, for_mobile, require_executorch
from deeprebirth.slimming import slim

pytest.importorskip("executorch")


def tiny():
    torch.manual_seed(0)
    return get_model("user_models:tiny_cnn", num_classes=10).eval()


def test_a_cnn_with_lrn_pooling_and_a_branch_runs_in_executorch(tmp_path):
    """F.local_response_norm has no ExecuTorch kernel: the rewrite makes the net loadable,
    and XNNPACK runs all of it."""
    model, x = tiny(), torch.randn(3, 3, 16, 16)
    r = export_executorch(model, tmp_path / "m.pte", x)
    assert r["relative_error"] < 1e-4 and r["top1_agreement"] == 1.0
    loaded = PteModel(tmp_path / "m.pte")
    assert loaded.input_shape == (1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    assert "aten_max_pool2d_default" in r["delegation"]["delegated_ops"]
    assert set(r["delegation"]["portable_ops"]) <= {"getitem"}  # nothing falls back
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_slimmed_model_exports_and_the_original_is_untouched(tmp_path):
    model = tiny()
    result = slim(model, name="user_models:tiny_cnn", input_size=16)
    x = torch.randn(2, 3, 16, 16)
    r = export_executorch(result.model, tmp_path / "s.pte", x)
    assert r["relative_error"] < 1e-4
    # The fused heads' channel split runs as slices in XNNPACK: one subgraph, no fallback.
    assert r["delegation"]["delegated_subgraphs"] == 1
    assert set(r["delegation"]["portable_ops"]) <= {"getitem"}
    assert any(n.target is torch.split for n in result.model.graph.nodes)  # untouched
    assert any(type(m).__name__ == "LocalResponseNorm" for m in model.modules())


def test_int8_program(tmp_path):
    model, x = tiny(), torch.randn(4, 3, 16, 16)
    r = export_executorch(model, tmp_path / "q.pte", x, calibration=[torch.randn(8, 3, 16, 16)])
    assert r["int8"] == "xnnpack" and r["relative_error"] < 0.15
    assert any("quantize" in op for op in r["delegation"]["delegated_ops"])
    assert PteModel(tmp_path / "q.pte")(x).shape == (4, 10)


def test_int8_program_smooths_conv_pairs_first(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(  # a Tucker-2 chain: 1x1 -> 3x3 core -> 1x1, then a head
        torch.nn.Conv2d(3, 6, 1, bias=False),
        torch.nn.Conv2d(6, 5, 3, padding=1, bias=False),
        torch.nn.Conv2d(5, 8, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()
    x = torch.randn(4, 3, 16, 16)
    r = export_executorch(model, tmp_path / "q.pte", x, calibration=[torch.randn(8, 3, 16, 16)])
    assert r["smoothed_pairs"] == 2 and r["relative_error"] < 0.15
    float_only = export_executorch(model, tmp_path / "f.pte", x)
    assert float_only["smoothed_pairs"] == 0  # float programs are exported as they are


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 20),
    size=st.integers(1, 7),
    alpha=st.floats(1e-5, 1.0),
    beta=st.floats(0.1, 1.0),
    k=st.floats(0.5, 2.0),
)
def test_banded_lrn_matches_torch(channels, size, alpha, beta, k):
    x = torch.randn(2, channels, 4, 5) * 3
    ref = nn.functional.local_response_norm(x, size, alpha, beta, k)
    torch.testing.assert_close(
        BandedLRN(size, alpha, beta, k, channels)(x), ref, rtol=1e-5, atol=1e-6
    )


def test_for_mobile_rewrites_every_lrn_it_reaches():
    model = get_model("bvlc_googlenet", num_classes=10, in_chans=1).eval()
    x = torch.randn(1, 1, 32, 32)
    mobile = for_mobile(model, x)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in mobile.modules())
    assert [m.window.shape[0] for m in mobile.modules() if isinstance(m, BandedLRN)] == [64, 192]
    with torch.no_grad():
        torch.testing.assert_close(mobile(x), model(x), rtol=1e-5, atol=1e-6)


class _Heads(nn.Module):
    """Fused 1x1 heads as ``fuse_parallel`` leaves them (a conv, a split, a ReLU per piece)
    between two convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 1)
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU()])
        self.post = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(self.conv(self.stem(x)), [8, 8], dim=1)
        return torch.cat([self.acts[0](a), self.post(self.acts[1](b))], 1)


def test_for_mobile_computes_the_fused_heads_activation_before_the_slices():
    model = fx.symbolic_trace(_Heads()).eval()
    x = torch.randn(1, 3, 8, 8)
    mobile = for_mobile(model, x)
    narrows = [n for n in mobile.graph.nodes if n.target is torch.narrow]
    assert len(narrows) == 2 and all(n.args[0].target == "acts.0" for n in narrows)
    torch.testing.assert_close(mobile(x), model(x))
    # not in int8, where XNNPACK fails to run such slices: each piece keeps its ReLU
    int8 = for_mobile(model, x, int8=True)
    assert [n.args[0].target for n in int8.graph.nodes if n.target is torch.narrow] == ["conv"] * 2


def test_int8_program_of_fused_heads_runs(tmp_path):
    torch.manual_seed(0)
    model = fx.symbolic_trace(_Heads()).eval()
    x = torch.randn(1, 3, 8, 8)
    export_executorch(model, tmp_path / "m.pte", x, [torch.randn(4, 3, 8, 8)])
    got = PteModel(tmp_path / "m.pte")(x)
    with torch.no_grad():
        assert (got - model(x)).norm() / model(x).norm() < 0.1


def test_profile_groups_xnnpack_operators_by_layer_kind():
    """ETDump's per-operator times, XNNPACK's own operators grouped into layer kinds; the
    LRN rewrite's Square ... Divide counts as LRN, and nothing is left unclassified."""
    from deeprebirth.profiling import profile

    r = profile(tiny(), runtimes=["executorch"], input_size=16, runs=3, layer_runs=3)
    et = r["runtimes"]["executorch"]
    rows = et["layers"]
    assert et["latency_ms"] > 0 and all(row["ms"] >= 0 for row in rows)
    ops = [row["op"] for row in rows]
    assert ops.count("Max Pooling") == 2  # pool1 and the branch's pool
    lrn = [row["op"] for row in rows if row["kind"] == "lrn"]
    assert lrn[0] == "Square" and lrn[-1] == "Divide" and {"Log", "Exp"} <= set(lrn)
    assert {"conv", "pool", "lrn", "concat"} <= set(et["by_kind"])
    assert "other" not in et["by_kind"]


def test_latencies_load_a_program_once_per_session():
    from deeprebirth.profiling.bench import latencies

    x = torch.randn(1, 3, 16, 16)
    out = latencies({"tiny": (tiny(), x)}, runtimes=["executorch"], runs=2, sessions=3)
    assert out["executorch"]["tiny"].runs == 6 and out["executorch"]["tiny"].median_ms > 0


def test_operator_events_map_to_kinds():
    from deeprebirth.graph.taxonomy import executorch_kind
    from deeprebirth.profiling.executorch_runtime import _spans_to_layers

    assert executorch_kind("Convolution (NHWC, QS8) IGEMM #3", delegated=True) == "conv"
    assert executorch_kind("Max Pooling (NHWC, F32) #12", delegated=True) == "pool"
    assert executorch_kind("native_call_max_pool2d_with_indices.out", delegated=False) == "pool"
    assert executorch_kind("native_call_cumsum.out", delegated=False) == "other"
    rows = [
        {"op": op, "kind": executorch_kind(op, True)}
        for op in ("Convolution", "Square", "Fully Connected", "Log", "Divide", "Square", "Add")
    ]
    kinds = [r["kind"] for r in _spans_to_layers(rows)]
    # the first Square ... Divide is an LRN; a Square with no Divide after it stays itself
    assert kinds == ["conv", "lrn", "lrn", "lrn", "lrn", "eltwise", "eltwise"]
    # only the rewrite's own operators may stand between: a pool in between is no LRN
    rows = [
        {"op": op, "kind": executorch_kind(op, True)} for op in ("Square", "Max Pooling", "Divide")
    ]
    assert [r["kind"] for r in _spans_to_layers(rows)] == ["eltwise", "pool", "eltwise"]


def test_without_executorch_the_error_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_executorch(name, *a, **kw):
        if name == "executorch" or name.startswith("executorch."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(DeepRebirthError, match=r"deeprebirth\[mobile\]"):
        require_executorch()


def test_cli_export_evaluate_bench(capsys, tmp_path):
    pte = str(tmp_path / "m.pte")
    code = main(
        [
            "export",
            "user_models:tiny_cnn",
            "--input-size",
            "16",
            "--format",
            "executorch",
            "-o",
            pte,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    out = " ".join(out.split())  # rich wraps long lines
    assert "portable kernels run nothing else" in out and "parity with PyTorch" in out
    code = main(["evaluate", pte, "--data", "synthetic", "--json", str(tmp_path / "e.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 64
    code = main(
        [
            "bench",
            "user_models:tiny_cnn",
            pte,
            "--input-size",
            "16",
            "--runtime",
            "executorch",
            "--runs",
            "3",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads((tmp_path / "b.json").read_text())
    assert set(r["runtimes"]) == {"executorch"} and r["runtimes"]["executorch"]["a_ms"] > 0
    code = main(["bench", "user_models:tiny_cnn", pte, "--input-size", "16", "--runtime", "ort"])
    _, err = capsys.readouterr()
    assert code == 2 and "runs only in executorch" in err
    prof = tmp_path / "p.json"
    args = ["profile", "user_models:tiny_cnn", "--input-size", "16", "--runtime", "executorch"]
    code = main([*args, "--runs", "3", "--json", str(prof)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ExecuTorch (XNNPACK) ms" in out and "Max Pooling" in out
    assert {"conv", "pool", "lrn"} <= set(
        json.loads(prof.read_text())["runtimes"]["executorch"]["by_kind"]
    )
    code = main([*args, "--batch", "2"])
    _, err = capsys.readouterr()
    assert code == 2 and "batch 1" in err


def test_int8_program_is_chosen_on_validation_images_like_onnx_runtimes(tmp_path, monkeypatch):
    """Each observer is tried and judged on labelled images; when the best loses too much,
    the layers ONNX Runtime's analysis ranks worst (mapped to modules) stay float."""
    from deeprebirth.export import int8_choice

    model, x = tiny(), torch.randn(4, 3, 16, 16)
    calibration = [torch.randn(8, 3, 16, 16)]
    val = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))]
    ranked = int8_choice.sensitive_modules(model, x, calibration, val[0][0].numpy())
    convs = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert ranked and set(ranked) <= convs  # module names, not ONNX node names
    # histogram 50%, minmax 60%: minmax kept; the float model 90%: one layer stays float
    scores = iter([0.5, 0.6, 0.9, 0.85])
    monkeypatch.setattr(int8_choice, "_top1", lambda m, batches: next(scores))
    monkeypatch.setattr(int8_choice, "sensitive_modules", lambda *a: ranked)
    r = export_executorch(model, tmp_path / "q.pte", x, calibration, choose_on=val)
    choice = r["int8_choice"]
    assert choice["top1"] == {"histogram": 0.5, "minmax": 0.6} and choice["observer"] == "minmax"
    assert choice["float_top1"] == 0.9 and choice["top1_kept_float"] == {0: 0.6, 1: 0.85}
    assert choice["kept_float"] == ranked[:1]
    ops = r["delegation"]["delegated_ops"]
    assert any("quantize" in op for op in ops)  # the rest is int8
    assert PteModel(tmp_path / "q.pte")(x).shape == (4, 10)


def test_the_int8_programs_logits_come_from_a_float_layer():
    """Like ONNX Runtime's: the layer that computes the output is not quantized, so the
    logits do not tie."""
    from deeprebirth.export.executorch import _quantize

    model, x = tiny(), torch.randn(1, 3, 16, 16)
    program = _quantize(torch.export.export(model, (x,)), x, [torch.randn(4, 3, 16, 16)])
    graph = program.graph_module.graph
    (out,) = [n for n in graph.nodes if n.op == "output"]
    last = out.args[0][0]
    assert last.target == torch.ops.aten.linear.default
    weight = last.args[1]
    assert "dequantize" not in str(getattr(weight, "target", ""))  # float weights
    assert any("quantize_per_tensor" in str(n.target) for n in graph.nodes)  # the rest int8
