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
