"""Layer taxonomy: which layers are *tensor layers* and which are *non-tensor layers*.

In the paper's words, tensor layers carry weight tensors (convolution, fully connected);
non-tensor layers do not (pooling, LRN, batch-norm at inference, concat, dropout, ...).
Everything here is data: supporting a new layer kind is one entry in a table.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..zoo.layers import LocalResponseNorm

#: Layer kinds whose layers hold weight tensors. Every other kind is non-tensor.
TENSOR_KINDS = frozenset({"conv", "fc"})

#: All kinds, in the order reports show them.
KINDS = (
    "conv",
    "fc",
    "pool",
    "lrn",
    "batchnorm",
    "concat",
    "dropout",
    "activation",
    "eltwise",
    "reshape",
    "quantize",
    "other",
)

#: Module type -> kind. Looked up along the MRO, so subclasses inherit their base's kind.
MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.Conv1d: "conv",
    nn.Conv2d: "conv",
    nn.Conv3d: "conv",
    nn.ConvTranspose2d: "conv",
    nn.Linear: "fc",
    nn.MaxPool2d: "pool",
    nn.AvgPool2d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
    nn.AdaptiveMaxPool2d: "pool",
    nn.LocalResponseNorm: "lrn",
    LocalResponseNorm: "lrn",
    nn.BatchNorm1d: "batchnorm",
    nn.BatchNorm2d: "batchnorm",
    nn.GroupNorm: "batchnorm",
    nn.LayerNorm: "batchnorm",
    nn.Dropout: "dropout",
    nn.Dropout2d: "dropout",
    nn.AlphaDropout: "dropout",
    nn.Identity: "reshape",
    nn.Flatten: "reshape",
    nn.ReLU: "activation",
    nn.ReLU6: "activation",
    nn.LeakyReLU: "activation",
    nn.PReLU: "activation",
    nn.ELU: "activation",
    nn.GELU: "activation",
    nn.SiLU: "activation",
    nn.Sigmoid: "activation",
    nn.Hardswish: "activation",
    nn.Hardsigmoid: "activation",
    nn.Tanh: "activation",
    nn.Softmax: "activation",
}

#: Function (call_function targets in a torch.fx graph) -> kind.
FUNCTION_KINDS: dict[object, str] = {
    torch.cat: "concat",
    torch.concat: "concat",
    torch.flatten: "reshape",
    torch.reshape: "reshape",
    torch.transpose: "reshape",
    torch.permute: "reshape",
    torch.split: "reshape",
    torch.chunk: "reshape",
    operator.getitem: "reshape",
    torch.relu: "activation",
    torch.sigmoid: "activation",
    torch.tanh: "activation",
    F.relu: "activation",
    F.relu6: "activation",
    F.gelu: "activation",
    F.silu: "activation",
    F.hardswish: "activation",
    F.hardsigmoid: "activation",
    F.softmax: "activation",
    F.dropout: "dropout",
    F.max_pool2d: "pool",
    F.avg_pool2d: "pool",
    F.adaptive_avg_pool2d: "pool",
    F.adaptive_max_pool2d: "pool",
    F.local_response_norm: "lrn",
    F.batch_norm: "batchnorm",
    F.layer_norm: "batchnorm",
    F.conv2d: "conv",
    F.linear: "fc",
    torch.add: "eltwise",
    torch.mul: "eltwise",
    operator.add: "eltwise",
    operator.iadd: "eltwise",
    operator.mul: "eltwise",
    operator.imul: "eltwise",
}

#: Tensor methods (call_method targets) -> kind.
METHOD_KINDS: dict[str, str] = {
    "flatten": "reshape",
    "view": "reshape",
    "reshape": "reshape",
    "permute": "reshape",
    "transpose": "reshape",
    "contiguous": "reshape",
    "chunk": "reshape",
    "split": "reshape",
    "size": "reshape",
    "mean": "pool",
    "relu": "activation",
    "sigmoid": "activation",
    "add": "eltwise",
    "add_": "eltwise",
    "mul": "eltwise",
    "mul_": "eltwise",
}

#: ONNX operator type (as ONNX Runtime reports it, fused kernels included) -> kind.
ONNX_KINDS: dict[str, str] = {
    "Conv": "conv",
    "FusedConv": "conv",
    "NhwcFusedConv": "conv",
    "QLinearConv": "conv",
    "ConvInteger": "conv",
    "Gemm": "fc",
    "FusedGemm": "fc",
    "QGemm": "fc",
    "MatMul": "fc",
    "QLinearMatMul": "fc",
    "MatMulInteger": "fc",
    "MaxPool": "pool",
    "NhwcMaxPool": "pool",  # uint8, after ORT's int8 layout pass
    "QLinearAveragePool": "pool",
    "QLinearGlobalAveragePool": "pool",
    "AveragePool": "pool",
    "GlobalAveragePool": "pool",
    "GlobalMaxPool": "pool",
    "ReduceMean": "pool",  # adaptive average pooling to 1x1 exports as ReduceMean
    "LRN": "lrn",
    "BatchNormalization": "batchnorm",
    "LayerNormalization": "batchnorm",
    "Concat": "concat",
    "QLinearConcat": "concat",
    "Dropout": "dropout",
    "Relu": "activation",
    "Clip": "activation",
    "Sigmoid": "activation",
    "HardSigmoid": "activation",
    "HardSwish": "activation",
    "Softmax": "activation",
    "Add": "eltwise",
    "QLinearAdd": "eltwise",
    "Mul": "eltwise",
    "QLinearMul": "eltwise",
    "Sum": "eltwise",
    "Flatten": "reshape",
    "Reshape": "reshape",
    "Transpose": "reshape",
    "Split": "reshape",
    "Slice": "reshape",
    "Identity": "reshape",
    "ReorderInput": "reshape",  # ORT's NCHWc layout conversions
    "ReorderOutput": "reshape",
    "Squeeze": "reshape",
    "Unsqueeze": "reshape",
    # int8: converting between float and int8 (no layer of the network's own)
    "QuantizeLinear": "quantize",
    "DequantizeLinear": "quantize",
    "DynamicQuantizeLinear": "quantize",
}


#: XNNPACK operator (as ExecuTorch's ETDump names it, before " (": "Convolution (NHWC, F32)
#: IGEMM #3" is a "Convolution") -> kind. These are what XNNPACK runs, not the source layers:
#: it runs 1x1 convs as "Fully Connected" GEMMs, an unfolded batch-norm as a depthwise
#: "Convolution", a concat as one "Copy" per input, and LRN (``BandedLRN``) as the chain
#: Square ... Divide, which :data:`XNNPACK_SPANS` gives back to its layer kind.
XNNPACK_KINDS: dict[str, str] = {
    "Convolution": "conv",
    "Deconvolution": "conv",
    "Fully Connected": "fc",
    "Batch Matrix Multiply": "fc",
    "Max Pooling": "pool",
    "Average Pooling": "pool",
    "Global Average Pooling": "pool",
    "Argmax Pooling": "pool",
    "Mean": "pool",
    "Sum": "pool",
    "Copy": "concat",
    "Concatenate": "concat",
    "Transpose": "reshape",
    "Static Reshape": "reshape",
    "Reshape": "reshape",
    "Static Slice": "reshape",
    "Slice": "reshape",
    "Constant Pad": "reshape",
    "Static Constant Pad": "reshape",
    "Depth To Space": "reshape",
    "Space To Depth": "reshape",
    "Clamp": "activation",
    "Sigmoid": "activation",
    "HardSwish": "activation",
    "Leaky ReLU": "activation",
    "ELU": "activation",
    "Tanh": "activation",
    "GELU": "activation",
    "Softmax": "activation",
    "Add": "eltwise",
    "Multiply": "eltwise",
    "Subtract": "eltwise",
    "Divide": "eltwise",
    "Square": "eltwise",
    "Square Root": "eltwise",
    "Exp": "eltwise",
    "Log": "eltwise",
    "Maximum": "eltwise",
    "Minimum": "eltwise",
}

#: Runs of XNNPACK operators that one source layer became, as (first op, last op) ->
#: (kind, the operators allowed between them): a run from the first to the next last with
#: only those between is that layer. ``BandedLRN`` squares its input first, sums the window
#: by a constant 1x1 conv (a GEMM), takes the power as exp(beta * log) and divides last.
XNNPACK_SPANS: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    ("Square", "Divide"): (
        "lrn",
        frozenset({"Fully Connected", "Convolution", "Transpose", "Multiply", "Add", "Log", "Exp"}),
    )
}

#: Portable-kernel operators (ETDump names them ``native_call_<op>.out``) -> kind.
ATEN_KINDS: dict[str, str] = {
    "convolution": "conv",
    "linear": "fc",
    "addmm": "fc",
    "mm": "fc",
    "max_pool2d_with_indices": "pool",
    "max_pool2d": "pool",
    "avg_pool2d": "pool",
    "_adaptive_avg_pool2d": "pool",
    "mean": "pool",
    "cat": "concat",
    "_native_batch_norm_legit_no_training": "batchnorm",
    "relu": "activation",
    "clamp": "activation",
    "hardtanh": "activation",
    "sigmoid": "activation",
    "_softmax": "activation",
    "add": "eltwise",
    "mul": "eltwise",
    "div": "eltwise",
    "view_copy": "reshape",
    "permute_copy": "reshape",
    "slice_copy": "reshape",
    "split_with_sizes_copy": "reshape",
    "clone": "reshape",
}


def is_tensor_kind(kind: str) -> bool:
    """True for tensor layers (conv, fc), False for every non-tensor kind."""
    return kind in TENSOR_KINDS


def module_kind(module: nn.Module) -> str:
    """The kind of a module, looked up along its class hierarchy."""
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls]
    return "other"


def node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind of a torch.fx node, or None for graph plumbing (inputs, outputs, attributes)."""
    if node.op == "call_module":
        return module_kind(modules[node.target])
    if node.op == "call_function":
        return FUNCTION_KINDS.get(node.target, "other")
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target, "other")
    return None


def onnx_kind(op_type: str) -> str:
    """The kind of an ONNX operator type."""
    return ONNX_KINDS.get(op_type, "other")


def is_leaf_type(module: nn.Module) -> bool:
    """Modules torch.fx should keep whole (not trace into): every module the taxonomy names."""
    return any(cls in MODULE_KINDS for cls in type(module).__mro__)


def xnnpack_op(event_name: str) -> str:
    """An XNNPACK event's operator: ``"Max Pooling (NHWC, F32) #2"`` -> ``"Max Pooling"``."""
    return event_name.split(" (")[0].split(" #")[0].strip()


def executorch_kind(event_name: str, delegated: bool) -> str:
    """The kind of one ExecuTorch operator event: an XNNPACK operator when ``delegated``,
    else a portable kernel (``native_call_max_pool2d_with_indices.out``)."""
    if delegated:
        return XNNPACK_KINDS.get(xnnpack_op(event_name), "other")
    op = event_name.removeprefix("native_call_").split(".")[0]
    return ATEN_KINDS.get(op, "other")
