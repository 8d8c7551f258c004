"""Small models used by the tests (and as an example of `package.module:factory`)."""

import torch
from torch import nn

from deeprebirth.zoo import LocalResponseNorm


class TinyInception(nn.Module):
    """conv -> ReLU -> max-pool -> LRN -> a two-branch block -> avg-pool -> fc."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm1 = LocalResponseNorm(5, 1e-4, 0.75)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2_pool = nn.MaxPool2d(3, 1, 1)
        self.b2 = nn.Conv2d(8, 4, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b2(self.b2_pool(x)))], 1)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_cnn(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return TinyInception(num_classes, in_chans)


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace this."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


def untraceable(**_) -> nn.Module:
    return DataDependent()


def not_a_module(**_):
    return "hello"


class InvertedResidual(nn.Module):
    """A MobileNetV2 block (1x1 expand, 3x3 depthwise, 1x1 project, residual) in a net."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 24, 3, padding=1)
        self.expand = nn.Conv2d(24, 144, 1)  # expansion 6, as in MobileNetV2
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(144, 144, 3, padding=1, groups=144)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(144, 24, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.project(self.act2(self.dw(self.act1(self.expand(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def mbv2_block(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return InvertedResidual(num_classes, in_chans)
