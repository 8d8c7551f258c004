"""Export to deployment formats, with native layers preserved and parity checked."""

from .check import FORMATS, PARITY_TOLERANCE, ParityError, export, leftover_layers
from .onnx import to_onnx

__all__ = ["FORMATS", "PARITY_TOLERANCE", "ParityError", "export", "leftover_layers", "to_onnx"]
