import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import fx, nn

from deeprebirth.export import OnnxModel, quantize_int8, to_onnx
from deeprebirth.export.int8 import int8_to_time
from deeprebirth.export.rewrite import activations_before_splits
from deeprebirth.zoo import get_model


def _run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_bvlc_googlenet_exports_native_lrn():
    model = get_model("bvlc_googlenet", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    proto = to_onnx(model, x)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LRN") == 2
    # PyTorch's own LRN export would add Pow/AveragePool/Div chains.
    assert "Pow" not in ops and "AveragePool" not in ops and "Div" not in ops
    with torch.no_grad():
        np.testing.assert_allclose(_run(proto, x), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_the_registry_built_once_exports_as_torch_onnx_export_does(monkeypatch):
    from deeprebirth.export import onnx as onnx_export

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LocalResponseNorm(5, 1e-4, 0.75)).eval()
    x = torch.randn(2, 3, 12, 12)
    assert onnx_export._registry() is not None  # this torch has the exporter's own export
    fast = to_onnx(model, x)
    monkeypatch.setattr(onnx_export, "_registry", lambda: None)  # the public call
    public = to_onnx(model, x)
    assert fast.graph.SerializeToString() == public.graph.SerializeToString()
    assert fast.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_plain_torch_lrn_is_exported_natively_too(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LocalResponseNorm(5, 1e-4, 0.75)).eval()
    x = torch.randn(1, 3, 12, 12)
    proto = to_onnx(model, x, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").is_file()
    assert [n.op_type for n in proto.graph.node].count("LRN") == 1
    assert type(model[1]) is nn.LocalResponseNorm  # the caller's model is untouched
    with torch.no_grad():
        np.testing.assert_allclose(_run(proto, x), model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_export_batch_sizes(batch):
    model = get_model("user_models:tiny_cnn")
    x = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(
            _run(to_onnx(model, x), x), model(x).numpy(), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_export_slimmed_round_trip(capsys, tmp_path, fmt, suffix):
    from deeprebirth.cli import main

    assert (
        main(["slim", "user_models:tiny_cnn", "--input-size", "16", "--out", str(tmp_path / "s")])
        == 0
    )
    target = tmp_path / f"m.{suffix}"
    assert main(["export", str(tmp_path / "s"), "--format", fmt, "-o", str(target)]) == 0
    assert target.is_file()
    assert "parity with PyTorch" in capsys.readouterr().out


def test_exported_slimmed_graph_has_no_removed_layers(tmp_path):
    from deeprebirth.export import export
    from deeprebirth.slimming import slim

    result = slim(get_model("bvlc_googlenet", num_classes=10), input_size=32)
    r = export(result.model, tmp_path / "m.onnx", "onnx", torch.randn(2, 3, 32, 32))
    assert r["leftover_non_tensor"] == {}
    assert not {"MaxPool", "LRN", "AveragePool"} & set(r["ops"])
    assert r["relative_error"] < 1e-4


def test_parity_failure_exits_nonzero_and_writes_nothing(capsys, tmp_path, monkeypatch):
    from deeprebirth.cli import main
    from deeprebirth.export import check

    class Off:
        def __init__(self, session):
            self.session = session

        def get_inputs(self):
            return self.session.get_inputs()

        def run(self, names, feed):
            return [o + 1.0 for o in self.session.run(names, feed)]

    real = check.ort_session
    monkeypatch.setattr(check, "ort_session", lambda proto, threads: Off(real(proto, threads)))
    code = main(
        ["export", "user_models:tiny_cnn", "--input-size", "16", "-o", str(tmp_path / "m.onnx")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "differs from PyTorch by" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def _slimmed_tiny(tmp_path, capsys):
    from deeprebirth.cli import main

    out = tmp_path / "s"
    assert main(["slim", "user_models:tiny_cnn", "--input-size", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("fmt, int8_op", [("qoperator", "QLinearConv"), ("qdq", "QuantizeLinear")])
def test_int8_export_stays_close_to_float(capsys, tmp_path, fmt, int8_op):
    import json

    from deeprebirth.cli import main
    from deeprebirth.data import get_dataset, get_loader
    from deeprebirth.evaluation import evaluate
    from deeprebirth.export import INT8_TOLERANCE, OnnxModel
    from deeprebirth.slimming import load

    slimmed = _slimmed_tiny(tmp_path, capsys)
    target = tmp_path / "int8.onnx"
    args = ["export", str(slimmed), "--int8", "--int8-format", fmt, "--data", "synthetic"]
    assert main([*args, "--calibration-images", "64", "-o", str(target)]) == 0
    assert "int8 ONNX" in capsys.readouterr().out
    int8 = OnnxModel(target)
    assert int8_op in {n.op_type for n in int8.proto.graph.node}
    # The stated bound: outputs within INT8_TOLERANCE of the float model's scale, and
    # top-1 accuracy on the same images within 10 points of the float model's.
    float_model = load(slimmed)
    x, _ = next(iter(get_loader(get_dataset("synthetic", input_size=16), 64)))
    with torch.no_grad():
        ref = float_model(x)
    err = ((int8(x) - ref).abs().max() / ref.abs().max()).item()
    assert err <= INT8_TOLERANCE
    loader = get_loader(get_dataset("synthetic", input_size=16), 16)
    assert abs(evaluate(int8, loader)["top1"] - evaluate(float_model, loader)["top1"]) <= 0.10
    # evaluate and bench take the .onnx file itself
    assert (
        main(["evaluate", str(target), "--data", "synthetic", "--json", str(tmp_path / "e.json")])
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 64


def test_int8_needs_data(capsys, tmp_path):
    from deeprebirth.cli import main

    code = main(["export", "user_models:tiny_cnn", "--int8", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code != 0 and "--int8 needs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_file_evaluates_like_its_model_and_benches(capsys, tmp_path):
    import json

    from deeprebirth.cli import main
    from deeprebirth.data import get_dataset, get_loader
    from deeprebirth.evaluation import evaluate
    from deeprebirth.export import OnnxModel
    from deeprebirth.slimming import load

    slimmed = _slimmed_tiny(tmp_path, capsys)
    f = tmp_path / "m.onnx"
    assert main(["export", str(slimmed), "-o", str(f)]) == 0
    loader = get_loader(get_dataset("synthetic", input_size=16), 16)
    assert evaluate(OnnxModel(f), loader) == evaluate(load(slimmed), loader)
    out = tmp_path / "b.json"
    args = ["bench", "user_models:tiny_cnn", str(f), "--input-size", "16", "--runs", "2"]
    assert main([*args, "--json", str(out)]) == 0  # torch is skipped for the ONNX file
    r = json.loads(out.read_text())
    assert set(r["runtimes"]) == {"ort"} and r["runtimes"]["ort"]["speedup"] > 0
    assert r["memory"] is None
    capsys.readouterr()
    assert main([*args, "--runtime", "torch"]) != 0
    assert "use --runtime ort" in capsys.readouterr().err


def test_onnx_file_with_fixed_batch_runs_any_batch(tmp_path):
    from deeprebirth.export import OnnxModel

    model = get_model("user_models:tiny_cnn")
    to_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "b1.onnx")  # batch fixed to 1
    onnx_model = OnnxModel(tmp_path / "b1.onnx")
    assert onnx_model.fixed_batch == 1 and onnx_model.input_shape == [1, 3, 16, 16]
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), model(x), rtol=1e-4, atol=1e-5)


def test_reduce_range_only_on_x86_without_vnni(monkeypatch):
    from deeprebirth.export import int8

    assert int8.reduce_range_for("x86_64", "fpu sse2 avx2 fma")  # AVX2 only: saturates
    assert int8.reduce_range_for("AMD64", [])  # Windows, flags unknown: the safe setting
    assert not int8.reduce_range_for("x86_64", "avx2 avx512f avx512_vnni")
    assert not int8.reduce_range_for("x86_64", "avx2 avx_vnni")
    assert not int8.reduce_range_for("aarch64", "fp asimd")
    assert not int8.reduce_range_for("arm64", "")
    monkeypatch.setattr(int8.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(int8, "cpu_isa", lambda: ["avx2", "fma"])
    assert int8.needs_reduce_range()
    monkeypatch.setattr(int8, "cpu_isa", lambda: ["avx2", "avx512_vnni"])
    assert not int8.needs_reduce_range()


def _tiny_int8_case(batches: int = 2):
    """A tiny float ONNX model, calibration batches, and validation batches labelled with
    the float model's own predictions (so accuracy near 1 means int8 kept its decisions)."""
    torch.manual_seed(0)
    model = get_model("user_models:tiny_cnn").eval()
    x = torch.randn(8, 3, 16, 16)
    calibration = [torch.randn(8, 3, 16, 16) for _ in range(batches)]
    val = []
    for _ in range(batches):
        images = torch.randn(8, 3, 16, 16)
        with torch.no_grad():
            val.append((images, model(images).argmax(1)))
    return to_onnx(model, x), calibration, val


def test_int8_logits_stay_float(tmp_path):
    """The quantize-dequantize pair on the output is removed: 8-bit logits tie (two classes
    equal on about 3% of images of a real model), and a tie's top-1 is arbitrary."""
    from deeprebirth.export import OnnxModel, quantize_int8

    proto, calibration, val = _tiny_int8_case(1)
    path = quantize_int8(proto, tmp_path / "q.onnx", calibration)
    graph = OnnxModel(path).proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    assert producer[graph.output[0].name].op_type == "Gemm"  # not a DequantizeLinear
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the rest is int8
    images = val[0][0]
    logits = OnnxModel(path)(images)
    assert logits.unique().numel() == logits.numel()  # no two logits alike


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_int8_folds_activations_into_the_conv_before(tmp_path, act):
    """A ReLU (Clip: ReLU6) after a conv leaves no float round trip in the int8 model: the
    conv's output is quantized over the activation's range, and the result matches."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act()
    ).eval()
    x = torch.randn(4, 3, 16, 16)
    calibration = [torch.randn(8, 3, 16, 16).numpy() for _ in range(2)]
    path = quantize_int8(to_onnx(model, x), tmp_path / "q.onnx", calibration)
    ops = [n.op_type for n in OnnxModel(path).proto.graph.node]
    # the first folded; the last stays a float op, as the output is left float
    assert ops.count("Conv") == 2 and ops.count("Relu") + ops.count("Clip") == 1
    assert ops[-1] in ("Relu", "Clip")
    with torch.no_grad():
        reference = model(x)
    got = OnnxModel(path)(x)
    assert got.min() >= 0
    assert (got - reference).norm() / reference.norm() < 0.05


def test_unknown_calibration_method_names_the_choices(tmp_path):
    from deeprebirth.errors import DeepRebirthError
    from deeprebirth.export import choose_int8, quantize_int8

    proto, calibration, val = _tiny_int8_case(1)
    with pytest.raises(DeepRebirthError, match="'kl'.*minmax, percentile, entropy"):
        quantize_int8(proto, tmp_path / "m.onnx", calibration, calibration_method="kl")
    with pytest.raises(DeepRebirthError, match="'kl'.*minmax, percentile, entropy"):
        choose_int8(proto, tmp_path / "m.onnx", calibration, val, methods=("minmax", "kl"))
    assert not (tmp_path / "m.onnx").exists()


def test_choose_int8_keeps_the_most_accurate_method(tmp_path):
    from deeprebirth.export import OnnxModel, choose_int8, needs_reduce_range

    proto, calibration, val = _tiny_int8_case()
    out = tmp_path / "int8.onnx"
    r = choose_int8(proto, out, calibration, val)
    assert list(r["top1"]) == ["minmax", "percentile", "entropy"]
    assert all(0 <= acc <= 1 for acc in r["top1"].values())
    assert r["top1"][r["method"]] == max(r["top1"].values())
    assert r["reduce_range"] == needs_reduce_range() and r["n"] == 16
    assert out.is_file() and r["path"] == str(out)
    # The file written is the chosen candidate: it scores what the choice said.
    written = OnnxModel(out)
    assert "QuantizeLinear" in {n.op_type for n in written.proto.graph.node}
    hits = sum((written(x).argmax(1) == y).sum().item() for x, y in val)
    assert hits / r["n"] == r["top1"][r["method"]]


def test_choose_int8_breaks_ties_by_the_order_given(tmp_path, monkeypatch):
    from deeprebirth.export import int8_choice

    scores = iter([0.5, 0.75, 0.75, 0.75])  # the three methods, then the float model
    monkeypatch.setattr(int8_choice, "_top1", lambda model, batches: next(scores))
    proto, calibration, val = _tiny_int8_case(1)
    methods = ("entropy", "minmax", "percentile")
    r = int8_choice.choose_int8(proto, tmp_path / "m.onnx", calibration, val, methods)
    assert r["top1"] == {"entropy": 0.5, "minmax": 0.75, "percentile": 0.75}
    assert r["method"] == "minmax"


def test_the_layers_quantization_hurts_most_are_kept_in_float(tmp_path, monkeypatch):
    from deeprebirth.export import OnnxModel, int8_choice

    proto, calibration, val = _tiny_int8_case(1)
    ranked = int8_choice.sensitive_nodes(
        proto,
        int8_choice.quantize_int8(proto, tmp_path / "q.onnx", calibration),
        val[0][0].numpy(),
    )
    convs = {n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    assert {name for name, _ in ranked} == convs  # every quantized layer, ranked
    assert [db for _, db in ranked] == sorted(db for _, db in ranked)  # worst first
    # int8 loses 40 points of the float model's 90: the worst layer stays float
    scores = iter([0.5, 0.5, 0.5, 0.9, 0.8])
    monkeypatch.setattr(int8_choice, "_top1", lambda model, batches: next(scores))
    r = int8_choice.choose_int8(proto, tmp_path / "m.onnx", calibration, val)
    assert r["float_top1"] == 0.9 and r["top1_kept_float"] == {0: 0.5, 1: 0.8}
    (kept,) = r["kept_float"]
    assert kept == ranked[0][0]
    graph = OnnxModel(tmp_path / "m.onnx").proto.graph
    node = next(n for n in graph.node if n.name == kept)
    assert not node.input[1].endswith("DequantizeLinear_Output")  # float weights
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the rest int8


def test_int8_calibration_is_chosen_on_validation_images_by_default(capsys, tmp_path):
    from deeprebirth.cli import main
    from deeprebirth.export import CALIBRATION_METHODS

    slimmed = _slimmed_tiny(tmp_path, capsys)
    args = ["export", str(slimmed), "--int8", "--data", "synthetic", "--calibration-images", "64"]
    assert main([*args, "-o", str(tmp_path / "int8.onnx")]) == 0
    out = capsys.readouterr().out
    assert "int8 calibration:" in out and "validation images" in out
    assert all(method in out for method in CALIBRATION_METHODS)
    # one method by hand: no choice made
    args += ["--int8-calibration", "percentile", "-o", str(tmp_path / "p.onnx")]
    assert main(args) == 0
    assert "int8 calibration:" not in capsys.readouterr().out


def test_an_unknown_int8_calibration_is_a_one_line_error(capsys, tmp_path):
    from deeprebirth.cli import main

    args = ["export", "user_models:tiny_cnn", "--int8", "--data", "synthetic"]
    code = main([*args, "--int8-calibration", "kl", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code != 0 and "--int8-calibration" in err and len(err.strip().splitlines()) == 1


def test_smoothing_conv_pairs_keeps_the_function_and_evens_out_ranges():
    from deeprebirth.export.smooth import linear_pairs, smooth_linear_pairs
    from deeprebirth.graph import capture

    torch.manual_seed(0)
    # a Tucker-2 chain: 1x1 -> 3x3 core -> 1x1, nothing between; then a ReLU and a conv
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 1, bias=False),
        torch.nn.Conv2d(6, 5, 3, padding=1, bias=False),
        torch.nn.Conv2d(5, 8, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3),
    ).eval()
    with torch.no_grad():  # one rank channel 100x the others, as Tucker-2's can be
        model[0].weight[2] *= 100
    x = torch.randn(16, 3, 12, 12)
    assert linear_pairs(capture(model)) == [("0", "1"), ("1", "2")]
    smoothed, pairs = smooth_linear_pairs(model, x)
    assert pairs == 2 and model[0].weight[2].abs().max() > 10  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)

        def spread(m):  # of the first conv's output channels' largest values
            peak = m.get_submodule("0")(x).abs().amax(dim=(0, 2, 3))
            return (peak.max() / peak.min()).item()

        assert spread(smoothed) < spread(model) / 5


def test_a_model_to_time_in_int8_is_quantized_at_its_input_and_output():
    # the block starts with a pool reading its input and ends with one: each runs between
    # quantized tensors, as inside an int8 network
    block = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 1), nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, 16, 16)
    proto = int8_to_time(to_onnx(block, x), x.numpy())
    made = {o: n for n in proto.graph.node for o in n.output}
    for pool in (n for n in proto.graph.node if n.op_type == "MaxPool"):
        assert made[pool.input[0]].op_type == "DequantizeLinear"
    out = made[proto.graph.output[0].name]
    assert out.op_type == "DequantizeLinear" and made[out.input[0]].op_type == "QuantizeLinear"
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert y.shape == (1, 4, 4, 4)


class _Heads(nn.Module):
    """Fused 1x1 heads as ``fuse_parallel`` leaves them: one conv, a split, an activation per
    piece; ``mixed``: one piece goes through another activation."""

    def __init__(self, mixed: bool = False, shared: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.ReLU6() if mixed else nn.ReLU()])
        self.post = nn.Conv2d(4, 4, 3, padding=1)
        self.shared = shared  # the conv's output is also read beside the split

    def forward(self, x):
        y = self.conv(x)
        a, b, c = torch.split(y, [4, 4, 4], dim=1)
        out = torch.cat([self.acts[0](a), self.post(self.acts[1](b)), self.acts[2](c)], 1)
        return out + y if self.shared else out


def test_activations_after_a_split_are_exported_before_it():
    model = fx.symbolic_trace(_Heads()).eval()
    x = torch.randn(2, 3, 8, 8)
    moved = activations_before_splits(model)
    assert moved is not model
    assert len([n for n in model.graph.nodes if n.op == "call_module"]) == 5  # untouched
    split = next(n for n in moved.graph.nodes if n.target is torch.split)
    assert split.args[0].target == "acts.0"
    assert [n.target for n in moved.graph.nodes if n.op == "call_module"] == [
        "conv",
        "acts.0",
        "post",
    ]
    torch.testing.assert_close(moved(x), model(x))
    # in ONNX the ReLU reads the conv and the split the ReLU: runtimes fuse it into the conv
    graph = to_onnx(model, x).graph
    made = {o: n for n in graph.node for o in n.output}
    (split,) = [n for n in graph.node if n.op_type == "Split"]
    assert made[split.input[0]].op_type == "Relu"
    assert sum(n.op_type == "Relu" for n in graph.node) == 1


def test_int8_splits_the_int8_tensor_of_fused_heads(tmp_path):
    """The heads' ReLU, moved before the split, folds into the conv; the split's pieces keep
    its input's scale, so ONNX Runtime drops their quantize-dequantize pairs."""
    torch.manual_seed(0)
    model = fx.symbolic_trace(_Heads()).eval()
    x = torch.randn(4, 3, 8, 8)
    path = quantize_int8(to_onnx(model, x), tmp_path / "q.onnx", [torch.randn(8, 3, 8, 8)])
    graph = OnnxModel(path).proto.graph
    assert "Relu" not in {n.op_type for n in graph.node}
    made = {o: n for n in graph.node for o in n.output}
    (split,) = [n for n in graph.node if n.op_type == "Split"]
    scale = made[split.input[0]].input[1:]
    for piece in split.output:
        readers = [n for n in graph.node if piece in n.input]
        assert [(n.op_type, n.input[1:]) for n in readers] == [("QuantizeLinear", scale)]
    got = OnnxModel(path)(x)
    with torch.no_grad():
        assert (got - model(x)).norm() / model(x).norm() < 0.05


@pytest.mark.parametrize("why", ["mixed", "shared"])
def test_activations_after_a_split_stay_where_they_are(why):
    """Not when the pieces' activations differ, nor when the split's input has another reader."""
    model = fx.symbolic_trace(_Heads(**{why: True})).eval()
    assert activations_before_splits(model) is model
    plain = _Heads()
    assert activations_before_splits(plain) is plain  # not a graph: returned as it is
