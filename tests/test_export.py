import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deeprebirth.export import to_onnx
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
