"""ExecuTorch (XNNPACK): export, load back, parity, int8, the LRN rewrite, the CLI."""

import builtins
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

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
    code = main(
        ["profile", "user_models:tiny_cnn", "--input-size", "16", "--runtime", "executorch"]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "bench A B --runtime executorch" in err
