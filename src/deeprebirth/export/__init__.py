"""Export to deployment formats, with native layers preserved and parity checked."""

from .check import (
    FORMATS,
    INT8_TOLERANCE,
    PARITY_TOLERANCE,
    ParityError,
    export,
    export_int8,
    leftover_layers,
)
from .int8 import DEFAULT_INT8_FORMAT, INT8_FORMATS, quantize_int8
from .onnx import to_onnx
from .onnx_file import OnnxModel, is_onnx_file

__all__ = [
    "DEFAULT_INT8_FORMAT",
    "FORMATS",
    "INT8_FORMATS",
    "INT8_TOLERANCE",
    "PARITY_TOLERANCE",
    "OnnxModel",
    "ParityError",
    "export",
    "export_int8",
    "is_onnx_file",
    "leftover_layers",
    "quantize_int8",
    "to_onnx",
]
