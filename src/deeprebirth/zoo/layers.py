"""Layers the paper's networks need that PyTorch does not export the way they run.

PyTorch exports ``nn.LocalResponseNorm`` to ONNX as a chain of Pow/Pad/AveragePool/Div
ops, which is not what Caffe or a mobile runtime executes and distorts what a profiler
measures. :class:`LocalResponseNorm` computes exactly the same function in PyTorch and
exports as a single native ONNX ``LRN`` node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("deeprebirth::lrn", mutates_args=())
def _lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return F.local_response_norm(x, size, alpha, beta, k)


@_lrn_op.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x)


def lrn_onnx(x, size: int, alpha: float, beta: float, k: float):
    """ONNX translation of ``deeprebirth::lrn``: one native LRN node (same formula as Caffe)."""
    from onnxscript import opset18 as op

    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


#: Passed to ``torch.onnx.export(custom_translation_table=...)``.
ONNX_TRANSLATIONS = {torch.ops.deeprebirth.lrn.default: lrn_onnx}


class LocalResponseNorm(nn.LocalResponseNorm):
    """Across-channel LRN, as in Caffe (``alpha`` is divided by ``size``).

    Identical to ``nn.LocalResponseNorm`` in PyTorch (and differentiable); during ONNX
    export it becomes one ``LRN`` node.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.ops.deeprebirth.lrn(x, self.size, self.alpha, self.beta, self.k)
        return super().forward(x)
