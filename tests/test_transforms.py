"""The rewrite quartet for each merge: module, pattern, expected replacement, comparison."""

import pytest
import torch
from torch import nn

from deeprebirth.graph import capture, example_input
from deeprebirth.planning import make_plan
from deeprebirth.slimming import slim
from deeprebirth.transforms import MERGES, propagate_shapes
from deeprebirth.zoo import LocalResponseNorm, get_model


def find_and_apply(model, kind, x):
    gm = capture(model.eval())
    propagate_shapes(gm, x)
    entries = MERGES[kind].find(gm)
    for entry in entries:
        propagate_shapes(gm, x)
        MERGES[kind].apply(gm, entry)
    gm.graph.lint()
    return gm, entries


def types_in(gm):
    return [type(m) for _, m in gm.named_modules()]


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model


def test_drop_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Identity(), nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    gm, entries = find_and_apply(model, "drop_layer", x)
    assert len(entries) == 2 and all(e.exact for e in entries)
    assert nn.Dropout not in types_in(gm) and nn.Identity not in types_in(gm)
    torch.testing.assert_close(gm(x), model(x))


def test_fold_batchnorm_conv_and_linear():
    model = randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 36, 5),
            nn.BatchNorm1d(5),
        )
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    gm, entries = find_and_apply(model, "fold_batchnorm", x)
    assert [e.nodes for e in entries] == [["0", "1"], ["4", "5"]]
    assert nn.BatchNorm2d not in types_in(gm) and nn.BatchNorm1d not in types_in(gm)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_bails_out_when_the_conv_output_has_other_users():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    _, entries = find_and_apply(Shared(), "fold_batchnorm", torch.randn(1, 3, 4, 4))
    assert entries == []


def test_avgpool_conv():
    model = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 5, 1))
    x = torch.randn(1, 3, 8, 8)
    gm, entries = find_and_apply(model, "avgpool_conv", x)
    assert len(entries) == 1
    assert nn.AvgPool2d not in types_in(gm)
    assert gm.get_submodule("1").kernel_size == (2, 2) and gm.get_submodule("1").stride == (2, 2)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


class ThreeHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 1)
        self.c = nn.Conv2d(4, 2, 3, padding=1)  # another geometry: not fused
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return torch.cat([self.relu(self.a(x)), torch.relu(self.b(x)), self.c(x)], 1)


def test_fuse_parallel():
    model = ThreeHeads().eval()
    x = torch.randn(2, 4, 6, 6)
    gm, entries = find_and_apply(model, "fuse_parallel", x)
    assert [e.nodes for e in entries] == [["a", "b"]]
    assert entries[0].geometry["out_channels"] == [3, 5]
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(c.out_channels for c in convs) == [2, 8]
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    gm.train()
    gm(x.requires_grad_()).sum().backward()  # split views are not modified in place


class RepBlock(nn.Module):
    """RepVGG/ACNet/diverse-branch style: linear branches on one input, summed."""

    def __init__(self, c=4, groups=1, stride=1):
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=groups), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, stride, groups=groups), nn.BatchNorm2d(c))
        self.row = nn.Conv2d(c, c, (1, 3), stride, (0, 1), groups=groups, bias=False)
        self.col = nn.Conv2d(c, c, (3, 1), stride, (1, 0), groups=groups)
        self.k5 = nn.Conv2d(c, c, 5, stride, 2, groups=groups)
        self.bn = nn.BatchNorm2d(c)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = 0.5 + self.k3(x) + self.k1(x)
        out += self.row(x) + self.col(x)
        out = torch.add(out, self.k5(x))
        if self.k3[0].stride == (1, 1):
            out = out + self.bn(x) + x + self.pool(x)
        return self.relu(out)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 1), (4, 1), (1, 2)])
def test_sum_parallel_merges_summed_linear_branches_into_one_conv(groups, stride):
    model = randomize_bn(RepBlock(groups=groups, stride=stride)).eval()
    x = torch.randn(2, 4, 9, 9)
    gm, entries = find_and_apply(model, "fold_batchnorm", x)
    propagate_shapes(gm, x)
    (entry,) = MERGES["sum_parallel"].find(gm)
    assert entry.exact and entry.nodes[0] == "k3.0"
    assert entry.geometry == {
        "kernel": [5, 5],
        "stride": [stride, stride],
        "padding": [2, 2],
        "groups": groups,
        "branches": 8 if stride == 1 else 5,
    }
    assert entry.note.startswith("5x5 conv + 3x3 conv + 1x3 conv + 3x1 conv + 1x1 conv")
    MERGES["sum_parallel"].apply(gm, entry)
    layers = [t for t in types_in(gm) if t not in (type(gm), nn.Module)]
    assert layers == [nn.Conv2d, nn.ReLU]  # one conv, groups kept
    assert gm.get_submodule("k3.0").groups == groups
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_sum_parallel_counts_the_macs_it_saves():
    model = randomize_bn(RepBlock()).eval()
    plan = make_plan(model, torch.randn(1, 4, 8, 8))
    (entry,) = [e for e in plan.entries if e.kind == "sum_parallel"]
    # 3x3 + 1x1 + 1x3 + 3x1 + 5x5 taps become one 5x5: 3x3 + 1 + 3 + 3 taps saved
    assert entry.macs_saved == 4 * 4 * 64 * (9 + 1 + 3 + 3)


class NotOneInput(nn.Module):
    """Sums that are not linear branches of one input: a residual block, a conv whose
    output is also read elsewhere, a broadcast, convs with different strides."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.c, self.d = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.e, self.f = nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 1, 2)
        self.g = nn.Conv2d(4, 1, 1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x))) + x  # residual: the branches read different inputs
        tap = self.c(y)
        z = tap + self.d(y)  # c is also read below
        w = self.g(z) + z  # broadcast over channels
        v = self.e(w) + self.pool(w)  # merges: the 2x2 pool is a corner of a 3x3 kernel
        return v, tap


def test_sum_parallel_leaves_other_sums_alone():
    model = NotOneInput().eval()
    x = torch.randn(1, 4, 8, 8)
    gm = capture(model)
    propagate_shapes(gm, x)
    entries = MERGES["sum_parallel"].find(gm)
    assert [e.nodes for e in entries] == [["e", "pool"]]
    MERGES["sum_parallel"].apply(gm, entries[0])
    for out, ref in zip(gm(x), model(x), strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_streamline_conv_relu_pool_lrn():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        LocalResponseNorm(5),
    )
    x = torch.randn(1, 3, 64, 64)
    gm, entries = find_and_apply(model, "streamline", x)
    (entry,) = entries
    assert not entry.exact and entry.nodes == ["0", "1", "2", "3"]
    assert entry.geometry["stride"] == [4, 4] and entry.geometry["kernel"] == [7, 7]
    assert types_in(gm)[1:] == [nn.Conv2d, nn.ReLU]  # pool and LRN gone, ReLU kept
    assert gm(x).shape == model(x).shape
    torch.testing.assert_close(gm.get_submodule("0").weight, model[0].weight)  # starts from it


def test_streamline_grows_the_kernel_when_no_padding_fits():
    # AlexNet's conv1 at 227x227: 11x11/4 then pool 3x3/2 -> 27x27 needs the 19x19 field.
    model = nn.Sequential(nn.Conv2d(3, 4, 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))
    x = torch.randn(1, 3, 227, 227)
    gm, (entry,) = find_and_apply(model, "streamline", x)
    assert entry.geometry["kernel"] == [19, 19] and entry.geometry["stride"] == [8, 8]
    assert gm(x).shape == model(x).shape == (1, 4, 27, 27)


def test_streamline_bails_out_when_an_intermediate_has_other_users():
    class Tap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.pool(y), y

    _, entries = find_and_apply(Tap(), "streamline", torch.randn(1, 3, 8, 8))
    assert entries == []


def test_branch_pool_then_fusion():
    model = get_model("user_models:tiny_cnn")
    x = torch.randn(1, 3, 16, 16)
    gm, entries = find_and_apply(model, "branch_pool", x)
    assert [e.nodes for e in entries] == [["b2_pool"]]
    assert gm(x).shape == model(x).shape
    propagate_shapes(gm, x)
    (fusion,) = MERGES["fuse_parallel"].find(gm)
    assert fusion.nodes == ["b1", "b2"]  # the pool branch's conv now reads the block input


def test_block_pool_strides_the_block_heads():
    model = get_model("bvlc_googlenet")
    x = example_input(1, 3, 64)
    plan = make_plan(model, x)
    (entry,) = [e for e in plan.entries if e.id == "block_pool:pool3"]
    assert set(entry.geometry["heads"]) == {
        "inception3b.branch1.conv",
        "inception3b.branch2.0.conv",
        "inception3b.branch3.0.conv",
        "inception3b.branch4.1.conv",
    }
    assert all(g["stride"] == [2, 2] for g in entry.geometry["heads"].values())
    assert entry.macs_saved > 0


@pytest.mark.parametrize("kind", sorted(MERGES))
def test_every_merge_has_a_kind_and_exactness(kind):
    assert MERGES[kind].kind == kind and isinstance(MERGES[kind].exact, bool)


class Unread(nn.Module):
    """A layer whose output nothing reads (as timm's DLA computes a projection it drops)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.unused = nn.Identity()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        self.unused(y)
        return self.pool(torch.relu(y))


def test_a_plan_applies_to_the_model_it_was_made_for_when_a_layer_is_never_read():
    model = randomize_bn(Unread()).eval()
    result = slim(model, input_size=8, exact_only=True)
    assert "fold_batchnorm:conv" in result.report.applied
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
