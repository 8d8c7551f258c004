"""Exports that check themselves: the exported artifact against PyTorch on the same inputs."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import DeepRebirthError
from ..export.onnx_file import ort_session
from ..parity import PARITY_TOLERANCE, relative_error
from .executorch import PteModel, to_executorch
from .int8 import DEFAULT_INT8_FORMAT, needs_reduce_range, quantize_int8
from .int8_choice import choose_executorch_int8, choose_int8
from .onnx import to_onnx
from .smooth import smooth_linear_pairs

#: The parity gate for an int8 model (PARITY_TOLERANCE for float), whose rounding is
#: expected: a bound on gross errors.
INT8_TOLERANCE = 0.15
FORMATS = ("onnx", "torchscript", "executorch")
#: Non-tensor layers a plan removes, as ONNX op types, with the module types they come from.
REMOVABLE_OPS = {
    "MaxPool": (nn.MaxPool2d,),
    "AveragePool": (nn.AvgPool2d,),
    "LRN": (nn.LocalResponseNorm,),
}


class ParityError(DeepRebirthError):
    pass


def _ort_output(proto: onnx.ModelProto, inputs: torch.Tensor, threads: int) -> torch.Tensor:
    session = ort_session(proto, threads)
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])


def _gate(path: Path, out: torch.Tensor, ref: torch.Tensor, tolerance: float, what: str) -> float:
    """The relative error of ``out``; above ``tolerance``, ``path`` is removed and it raises."""
    err = relative_error(out, ref)
    if err > tolerance or out.shape != ref.shape:
        path.unlink(missing_ok=True)
        raise ParityError(
            f"{what} differs from PyTorch by {err:.2e} of the output's scale "
            f"(tolerance {tolerance:g}); nothing written"
        )
    return err


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
    if fmt == "executorch":
        return export_executorch(model, path, inputs)
    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        reference = model(inputs)
    report: dict = {"format": fmt, "path": str(path), "inputs": list(inputs.shape)}
    if fmt == "onnx":
        proto = to_onnx(model, inputs, path)
        out = _ort_output(proto, inputs, threads)
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
    report["relative_error"] = _gate(path, out, reference, PARITY_TOLERANCE, f"{fmt} export")
    return report


#: Calibration images whose activation ranges set the smoothing of conv pairs.
SMOOTHING_IMAGES = 256


def export_int8(
    model: nn.Module,
    path: str | Path,
    inputs: torch.Tensor,
    calibration: Iterable[torch.Tensor],
    fmt: str = DEFAULT_INT8_FORMAT,
    threads: int = 1,
    calibration_method: str = "minmax",
    choose_on: list | None = None,
) -> dict:
    """Export ``model`` to ONNX, quantize it to int8 with ``calibration`` batches, check it.

    ``calibration_method``: one of :data:`~.int8.CALIBRATION_METHODS`, or ``"auto"``: each
    is tried and the one with the best top-1 on ``choose_on`` (labelled validation batches)
    kept (:func:`~.int8_choice.choose_int8`). 7-bit weights only where the CPU needs them.
    Convs that feed the next conv directly are smoothed first (:mod:`.smooth`).

    The check runs the int8 model in ONNX Runtime on ``inputs`` (real images, ideally) and
    compares with PyTorch in float: the relative error must stay within ``INT8_TOLERANCE``,
    and the share of images whose top-1 class is unchanged is reported.

    Raises:
        ParityError: when the int8 model is off by more than ``INT8_TOLERANCE``.
    """
    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        reference = model(inputs)
    calibration = list(calibration)
    # conv pairs with nothing between them share their ranges first (exact in float)
    images = torch.cat([torch.as_tensor(b) for b in calibration])[:SMOOTHING_IMAGES]
    smoothed, pairs = smooth_linear_pairs(model, images)
    proto = to_onnx(smoothed, inputs)
    choice = None
    if calibration_method == "auto":
        if not choose_on:
            raise DeepRebirthError("int8 calibration 'auto' needs labelled validation batches")
        choice = choose_int8(proto, path, list(calibration), choose_on, fmt=fmt, threads=threads)
        calibration_method = choice["method"]
    else:
        quantize_int8(
            proto,
            path,
            (b.numpy() for b in calibration),
            fmt,
            calibration_method=calibration_method,
        )
    quantized = onnx.load(str(path))
    out = _ort_output(quantized, inputs, threads)
    return {
        "format": "onnx",
        "int8": fmt,
        "calibration_method": calibration_method,
        "reduce_range": needs_reduce_range(),
        "smoothed_pairs": pairs,
        **({"int8_choice": choice} if choice else {}),
        "path": str(path),
        "inputs": list(inputs.shape),
        "ops": dict(Counter(n.op_type for n in quantized.graph.node)),
        "relative_error": _gate(path, out, reference, INT8_TOLERANCE, "int8 model"),
        "top1_agreement": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
    }


def export_executorch(
    model: nn.Module,
    path: str | Path,
    inputs: torch.Tensor,
    calibration: Iterable[torch.Tensor] | None = None,
    choose_on: Iterable[tuple] | None = None,
) -> dict:
    """Write ``model`` as an ExecuTorch program (XNNPACK), load it back in the ExecuTorch
    runtime and check it against PyTorch on ``inputs``; int8 with ``calibration`` images,
    its observer and the layers kept float chosen on ``choose_on`` (``(images, labels)``
    validation batches) when given (:func:`~.int8_choice.choose_executorch_int8`).

    The gate is the ONNX one: ``PARITY_TOLERANCE`` of the output's scale in float,
    ``INT8_TOLERANCE`` in int8; on failure nothing is left at ``path``.
    """

    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        reference = model(inputs)
    pairs = 0
    if calibration is not None:  # conv pairs share their ranges first, as for ONNX Runtime
        calibration = list(calibration)
        images = torch.cat([torch.as_tensor(b) for b in calibration])[:SMOOTHING_IMAGES]
        model, pairs = smooth_linear_pairs(model, images)
    choice = None
    if calibration is not None and choose_on is not None:
        program, summary, choice = choose_executorch_int8(model, inputs, calibration, choose_on)
    else:
        program, summary = to_executorch(model, inputs, calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(program)
    try:
        out = PteModel(tmp)(inputs)
        int8 = calibration is not None
        tolerance = INT8_TOLERANCE if int8 else PARITY_TOLERANCE
        what = "int8 ExecuTorch program" if int8 else "ExecuTorch export"
        error = _gate(tmp, out, reference, tolerance, what)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "format": "executorch",
        "int8": "xnnpack" if calibration is not None else None,
        "smoothed_pairs": pairs,
        "int8_choice": choice,
        "path": str(path),
        "inputs": list(inputs.shape),
        "delegation": summary,
        "relative_error": error,
        "top1_agreement": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
    }
