import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep data caches and torch hub lookups inside the test's own directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(autouse=True)
def report_runtimes(request, monkeypatch):
    """Slim reports measure PyTorch eager and ONNX Runtime in tests, which is quicker; tests
    marked ``full_report`` get the real default (ExecuTorch too, when installed)."""
    if request.node.get_closest_marker("full_report") is None:
        from deeprebirth import pipeline

        monkeypatch.setattr(pipeline, "report_runtimes", lambda: ["torch", "ort"])
