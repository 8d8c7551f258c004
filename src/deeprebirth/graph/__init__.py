"""Graph analysis: capture a model with torch.fx and classify its layers."""

from .capture import LayerTracer, capture, example_input
from .taxonomy import KINDS, TENSOR_KINDS, is_tensor_kind, module_kind, node_kind, onnx_kind

__all__ = [
    "KINDS",
    "TENSOR_KINDS",
    "LayerTracer",
    "capture",
    "example_input",
    "is_tensor_kind",
    "module_kind",
    "node_kind",
    "onnx_kind",
]
