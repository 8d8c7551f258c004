"""int8: ONNX Runtime static quantization of an exported model, calibrated on real images.

Static quantization fixes each activation's int8 scale from calibration images (min/max
over a few hundred of them), so inference needs no run-time range computation. Two
layouts are supported:

* ``qdq`` (the default): QuantizeLinear/DequantizeLinear pairs around float ops, which ORT
  fuses into int8 kernels at load; the layout mobile execution providers (NNAPI, QNN,
  XNNPACK) take;
* ``qoperator``: quantized kernels (``QLinearConv`` ...) written into the graph.

On this project's CPU both ran equally fast (``benchmarks/paper_table.py``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from ..errors import DeepRebirthError
from ..files import publish

INT8_FORMATS = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
#: Ops given int8 kernels. Others stay float: with ORT's defaults, QOperator models of the
#: slimmed GoogLeNet lost all accuracy (quantized Split/ReduceMean), and these four carry
#: nearly all of the time.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Concat"]
#: The layout ``export --int8`` uses unless told otherwise.
DEFAULT_INT8_FORMAT = "qdq"


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(
    model: onnx.ModelProto | str | Path,
    out: str | Path,
    calibration: Iterable[np.ndarray],
    fmt: str = DEFAULT_INT8_FORMAT,
    per_channel: bool = True,
    reduce_range: bool = True,
    **options,
) -> Path:
    """Quantize a float ONNX model to int8 (weights per channel, activations per tensor).

    Args:
        model: the float model (a ModelProto or a path to an ``.onnx`` file).
        out: where to write the int8 model (written atomically).
        calibration: batches of input images as float32 arrays (NCHW), e.g. a few hundred
            training images; the activation ranges come from them.
        fmt: ``"qoperator"`` or ``"qdq"``.
        reduce_range: 7-bit weights, safe on every x86 CPU; pass False on CPUs with VNNI
            or on ARM for a little more accuracy.
        options: passed to ``onnxruntime.quantization.quantize_static``.
    """
    if fmt not in INT8_FORMATS:
        raise DeepRebirthError(
            f"unknown int8 format {fmt!r}; choose from {', '.join(INT8_FORMATS)}"
        )
    out = Path(out)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    input_name = proto.graph.input[0].name
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer logs advice at INFO
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(proto, str(source))
        # Shape inference and graph clean-up (constant folding, BN fusion) before quantizing.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        result = Path(tmp) / "int8.onnx"
        reader = _Batches(input_name, (np.ascontiguousarray(b, np.float32) for b in calibration))
        quantize_static(
            str(prepared),
            str(result),
            reader,
            quant_format=INT8_FORMATS[fmt],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: u8 x s8 products can saturate on x86 CPUs without VNNI
            # (AVX2 only, as here), which cost the slimmed GoogLeNet 4 points of top-1.
            reduce_range=reduce_range,
            **{
                "op_types_to_quantize": QUANTIZED_OPS,
                "calibrate_method": CalibrationMethod.MinMax,
                **options,
            },
        )
        onnx.checker.check_model(str(result))
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        staged.write_bytes(result.read_bytes())
        publish(staged, out)
    return out
