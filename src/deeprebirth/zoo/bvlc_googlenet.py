"""GoogLeNet as released with Caffe (BVLC ``bvlc_googlenet``, deploy prototxt).

conv1 7x7/2 -> max-pool 3x3/2 -> LRN -> conv2 1x1 -> conv2 3x3 -> LRN -> max-pool ->
inception 3a, 3b -> max-pool -> 4a..4e -> max-pool -> 5a, 5b -> avg-pool -> dropout -> fc.
ReLU after every conv, no batch-norm, ceil-rounded pooling (Caffe's rule). The final
average pool is global so smaller inputs (e.g. 64x64) work; at 224x224 it is Caffe's 7x7.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._registry import register_model
from .layers import LocalResponseNorm

# (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), as in the Caffe prototxt.
INCEPTION_CONFIG = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)


def conv_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel, stride, padding),
            relu=nn.ReLU(inplace=True),
        )
    )


def caffe_lrn() -> LocalResponseNorm:
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


def caffe_max_pool(kernel: int = 3, stride: int = 2, padding: int = 0) -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)


class Inception(nn.Module):
    """Four branches on one input, concatenated: 1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int):
        super().__init__()
        self.branch1 = conv_relu(c_in, c1, 1)
        self.branch2 = nn.Sequential(conv_relu(c_in, c3r, 1), conv_relu(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(conv_relu(c_in, c5r, 1), conv_relu(c5r, c5, 5, padding=2))
        self.branch4 = nn.Sequential(caffe_max_pool(3, 1, 1), conv_relu(c_in, pp, 1))
        self.out_channels = c1 + c3 + c5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class BVLCGoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.4):
        super().__init__()
        self.conv1 = conv_relu(in_chans, 64, 7, stride=2, padding=3)
        self.pool1 = caffe_max_pool()
        self.norm1 = caffe_lrn()
        self.conv2_reduce = conv_relu(64, 64, 1)
        self.conv2 = conv_relu(64, 192, 3, padding=1)
        self.norm2 = caffe_lrn()
        self.pool2 = caffe_max_pool()
        c_in = 192
        for name, *widths in INCEPTION_CONFIG:
            block = Inception(c_in, *widths)
            self.add_module(name, block)
            c_in = block.out_channels
            if name in ("inception3b", "inception4e"):
                self.add_module(f"pool{name[-2]}", caffe_max_pool())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Caffe's deploy recipe: xavier weights, constant 0.2 bias on convs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.2)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.conv1(x)))
        x = self.pool2(self.norm2(self.conv2(self.conv2_reduce(x))))
        x = self.pool3(self.inception3b(self.inception3a(x)))
        for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d):
            x = block(x)
        x = self.pool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return self.fc(x)


@register_model(paper="DeepRebirth's GoogLeNet (Caffe BVLC release)", input_size=224)
def bvlc_googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> BVLCGoogLeNet:
    """BVLC GoogLeNet with LRN, no batch-norm. ``in_chans=1`` for grayscale input."""
    return BVLCGoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
