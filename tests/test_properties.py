"""Property-based: random small CNNs never crash plan or slim; exact merges keep the function."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from deeprebirth.graph import example_input
from deeprebirth.planning import make_plan
from deeprebirth.transforms import PARITY_TOLERANCE, apply_plan, relative_error
from deeprebirth.zoo import LocalResponseNorm

LAYERS = [
    "conv3",
    "conv1s2",
    "bn",
    "relu",
    "maxpool_ceil",
    "maxpool2",
    "avgpool2",
    "lrn",
    "dropout",
    "inception",
    "residual",
]


class Inception(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.b1 = nn.Conv2d(c, 2, 1)
        self.b2 = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 2, 1))

    def forward(self, x):
        return torch.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class RandomCNN(nn.Module):
    def __init__(self, names, size):
        super().__init__()
        c, layers = 3, []
        for name in names:
            if name in ("maxpool_ceil", "maxpool2", "avgpool2", "conv1s2") and size < 4:
                continue
            if name == "conv3":
                layers.append(nn.Conv2d(c, 6, 3, padding=1))
                c = 6
            elif name == "conv1s2":
                layers.append(nn.Conv2d(c, 5, 1, stride=2))
                c, size = 5, (size + 1) // 2
            elif name == "bn":
                layers.append(nn.BatchNorm2d(c))
            elif name == "relu":
                layers.append(nn.ReLU())
            elif name == "maxpool_ceil":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                size = -(-(size - 3) // 2) + 1
            elif name == "maxpool2":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            elif name == "avgpool2":
                layers.append(nn.AvgPool2d(2))
                size //= 2
            elif name == "lrn":
                layers.append(LocalResponseNorm(3))
            elif name == "dropout":
                layers.append(nn.Dropout(0.3))
            elif name == "inception":
                layers.append(Inception(c))
                c = 7
            elif name == "residual":
                layers.append(Residual(c))
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.layers(x))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(st.sampled_from(LAYERS), min_size=1, max_size=6),
    size=st.sampled_from([9, 16, 23]),
)
def test_random_cnns_plan_and_slim(names, size):
    model = RandomCNN(names, size).eval()
    x = example_input(2, 3, size)
    with torch.no_grad():
        ref = model(x)
    plan = make_plan(model, x[:1])
    slimmed, report = apply_plan(model, plan, x[:1])
    assert not report.reverted
    with torch.no_grad():
        assert slimmed(x).shape == ref.shape
    exact, _ = apply_plan(model, plan, x[:1], exact_only=True)
    with torch.no_grad():
        assert relative_error(exact(x), ref) < 10 * PARITY_TOLERANCE


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 24),
    size=st.integers(1, 7),
    alpha=st.floats(1e-5, 1.0),
    beta=st.floats(0.1, 1.0),
    k=st.floats(0.5, 2.0),
    scale=st.floats(0.1, 10.0),
)
def test_lrn_as_a_banded_conv_matches_torch(channels, size, alpha, beta, k, scale):
    x = torch.randn(2, channels, 5, 4) * scale
    x.requires_grad_(True)
    lrn = LocalResponseNorm(size, alpha, beta, k)
    out = lrn(x)
    ref = torch.nn.functional.local_response_norm(x, size, alpha, beta, k)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
