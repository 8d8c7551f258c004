"""Export to deployment formats, with native layers preserved and parity checked."""

from .check import (
    FORMATS,
    INT8_TOLERANCE,
    PARITY_TOLERANCE,
    ParityError,
    export,
    export_executorch,
    export_int8,
    leftover_layers,
)
from .executorch import PteModel, is_pte_file
from .int8 import (
    CALIBRATION_METHODS,
    DEFAULT_INT8_FORMAT,
    INT8_FORMATS,
    needs_reduce_range,
    quantize_int8,
)
from .int8_choice import choose_int8
from .onnx import to_onnx
from .onnx_file import OnnxModel, is_onnx_file


def is_deployed_file(spec) -> bool:
    """An exported program that runs in its own runtime: ``.onnx`` or ``.pte``."""
    return is_onnx_file(spec) or is_pte_file(spec)


def load_deployed(spec):
    """An :class:`OnnxModel` (ONNX Runtime) or a :class:`PteModel` (ExecuTorch)."""
    return OnnxModel(spec) if is_onnx_file(spec) else PteModel(spec)


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_INT8_FORMAT",
    "FORMATS",
    "INT8_FORMATS",
    "INT8_TOLERANCE",
    "PARITY_TOLERANCE",
    "OnnxModel",
    "PteModel",
    "ParityError",
    "choose_int8",
    "export",
    "export_executorch",
    "export_int8",
    "is_deployed_file",
    "is_onnx_file",
    "is_pte_file",
    "load_deployed",
    "leftover_layers",
    "needs_reduce_range",
    "quantize_int8",
    "to_onnx",
]
