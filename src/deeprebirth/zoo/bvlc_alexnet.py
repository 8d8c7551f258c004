"""AlexNet as released with Caffe (BVLC ``bvlc_alexnet``), and CaffeNet.

conv -> ReLU -> LRN -> max-pool stages with Caffe's grouped convs (conv2, conv4, conv5 in
two groups), then three fully connected layers. CaffeNet is the same network with
pooling before normalisation. An adaptive average pool before fc6 (identity at 227x227)
lets smaller inputs through.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model
from .bvlc_googlenet import caffe_lrn, caffe_max_pool


class BVLCAlexNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        pool_before_norm: bool = False,
    ):
        super().__init__()

        def stage(conv: nn.Conv2d) -> nn.Sequential:
            norm_pool = (
                [caffe_max_pool(), caffe_lrn()]
                if pool_before_norm
                else [
                    caffe_lrn(),
                    caffe_max_pool(),
                ]
            )
            return nn.Sequential(conv, nn.ReLU(inplace=True), *norm_pool)

        self.features = nn.Sequential(
            stage(nn.Conv2d(in_chans, 96, 11, stride=4)),
            stage(nn.Conv2d(96, 256, 5, padding=2, groups=2)),
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            caffe_max_pool(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(paper="AlexNet (Caffe BVLC release)", input_size=227)
def bvlc_alexnet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> BVLCAlexNet:
    """Caffe's AlexNet: conv -> ReLU -> LRN -> max-pool, grouped convs."""
    return BVLCAlexNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper="CaffeNet (AlexNet with pooling before LRN)", input_size=227)
def bvlc_caffenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> BVLCAlexNet:
    """CaffeNet: AlexNet with max-pool before LRN in the first two stages."""
    return BVLCAlexNet(num_classes=num_classes, in_chans=in_chans, pool_before_norm=True, **kwargs)
