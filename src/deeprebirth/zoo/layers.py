"""Layers the paper's networks need that PyTorch does not export the way they run.

PyTorch exports ``nn.LocalResponseNorm`` to ONNX as a chain of Pow/Pad/AveragePool/Div
ops, which is not what Caffe or a mobile runtime executes and distorts what a profiler
measures. :class:`LocalResponseNorm` computes exactly the same function in PyTorch and
exports as a single native ONNX ``LRN`` node.

In eager PyTorch it sums the squared activations over the channel window with one 1x1
convolution by a fixed banded 0/1 matrix instead of ``F.local_response_norm``'s padded 3-D
average pool: the same function, about ten times cheaper to train through on a CPU.
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
    from onnxscript import opset18 as op  # only ONNX export needs it: not at start-up

    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


#: Passed to ``torch.onnx.export(custom_translation_table=...)``.
ONNX_TRANSLATIONS = {torch.ops.deeprebirth.lrn.default: lrn_onnx}


def channel_window(channels: int, size: int, dtype=None, device=None) -> torch.Tensor:
    """The ``(C, C, 1, 1)`` 0/1 band that sums LRN's window of ``size`` channels.

    Output channel ``c`` sums input channels ``c - size // 2 .. c + (size - 1) // 2`` (those
    that exist), the window ``F.local_response_norm`` averages over.
    """
    c = torch.arange(channels, device=device)
    offset = c[None, :] - c[:, None]  # [out, in]: in - out
    band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    return band.to(dtype or torch.get_default_dtype())[:, :, None, None]


def banded_local_response_norm(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """``F.local_response_norm`` for 4-D input, its window sum done as one 1x1 convolution."""
    window = channel_window(x.shape[1], size, x.dtype, x.device)
    div = F.conv2d(x * x, window).mul(alpha / size).add(k).pow(beta)
    return x / div


class LocalResponseNorm(nn.LocalResponseNorm):
    """Across-channel LRN, as in Caffe (``alpha`` is divided by ``size``).

    Identical to ``nn.LocalResponseNorm`` in PyTorch (and differentiable); during ONNX
    export it becomes one ``LRN`` node.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.ops.deeprebirth.lrn(x, self.size, self.alpha, self.beta, self.k)
        if x.dim() != 4:
            return super().forward(x)
        return banded_local_response_norm(x, self.size, self.alpha, self.beta, self.k)
