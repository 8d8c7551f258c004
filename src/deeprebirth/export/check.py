"""Exports that check themselves: the exported artifact against PyTorch on the same inputs."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import DeepRebirthError
from ..profiling.ort_runtime import ort_session
from .onnx import to_onnx

#: Largest accepted output difference, relative to the output's scale.
PARITY_TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")
#: Non-tensor layers a plan removes, as ONNX op types, with the module types they come from.
REMOVABLE_OPS = {
    "MaxPool": (nn.MaxPool2d,),
    "AveragePool": (nn.AvgPool2d,),
    "LRN": (nn.LocalResponseNorm,),
}


class ParityError(DeepRebirthError):
    pass


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def leftover_layers(proto: onnx.ModelProto, model: nn.Module) -> dict[str, int]:
    """ONNX pooling/LRN nodes beyond those the PyTorch model still has (should be none)."""
    ops = Counter(n.op_type for n in proto.graph.node)
    extra = {}
    for op, types in REMOVABLE_OPS.items():
        expected = sum(isinstance(m, types) for m in model.modules())
        if ops[op] > expected:
            extra[op] = ops[op] - expected
    return extra


def export(
    model: nn.Module, path: str | Path, fmt: str, inputs: torch.Tensor, threads: int = 1
) -> dict:
    """Export ``model`` to ``path`` as ``fmt`` and check it against PyTorch on ``inputs``.

    Raises:
        ParityError: when the exported model's output differs by more than
            ``PARITY_TOLERANCE`` of the output's scale (the file is removed).
    """
    if fmt not in FORMATS:
        raise DeepRebirthError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        reference = model(inputs)
    report: dict = {"format": fmt, "path": str(path), "inputs": list(inputs.shape)}
    if fmt == "onnx":
        proto = to_onnx(model, inputs, path)
        session = ort_session(proto, threads)
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])
        report["ops"] = dict(Counter(n.op_type for n in proto.graph.node))
        report["leftover_non_tensor"] = leftover_layers(proto, model)
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still deployed
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(model, inputs[:1], check_trace=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.jit.save(scripted, str(path))
            reloaded = torch.jit.load(str(path))
        with torch.no_grad():
            out = reloaded(inputs)
    err = _relative_error(out, reference)
    report["relative_error"] = err
    if err > PARITY_TOLERANCE or out.shape != reference.shape:
        path.unlink(missing_ok=True)
        raise ParityError(
            f"{fmt} export differs from PyTorch by {err:.2e} of the output's scale "
            f"(tolerance {PARITY_TOLERANCE:.0e}); nothing written"
        )
    return report
