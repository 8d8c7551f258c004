"""Export to deployment formats, with native layers preserved."""

from .onnx import to_onnx

__all__ = ["to_onnx"]
