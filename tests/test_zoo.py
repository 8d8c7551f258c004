import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deeprebirth.errors import CheckpointError, DeepRebirthError, UnknownModelError
from deeprebirth.graph import capture
from deeprebirth.zoo import LocalResponseNorm, get_model, list_models, register_model

SMOKE = [
    "bvlc_googlenet",
    "bvlc_alexnet",
    "bvlc_caffenet",
    "resnet18",
    "googlenet",
    "squeezenet1_1",
    "mobilenet_v2",
    "user_models:tiny_cnn",
]


@pytest.mark.parametrize("name", SMOKE)
def test_zoo_forward_and_trace(name):
    model = get_model(name, num_classes=7)
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7)
    gm = capture(model)
    gm.graph.lint()
    torch.testing.assert_close(gm(x), y)


def test_list_models_has_paper_and_torchvision_nets():
    names = list_models()
    for name in ("bvlc_googlenet", "bvlc_alexnet", "resnet50", "googlenet", "squeezenet1_1"):
        assert name in names
    assert list_models("alexnet") == ["bvlc_alexnet", "alexnet"]


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("bvlc_googlenet")(lambda: nn.Identity())


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError, match="did you mean.*googlenet"):
        get_model("googlnet")


def test_bvlc_googlenet_is_the_caffe_release():
    model = get_model("bvlc_googlenet")
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.Conv2d) == 57  # Caffe deploy prototxt: 57 convs, 1 fc
    assert kinds.count(nn.Linear) == 1
    assert kinds.count(LocalResponseNorm) == 2
    assert kinds.count(nn.MaxPool2d) == 4 + 9  # 4 on the trunk, one per inception block
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.ceil_mode for m in model.modules() if isinstance(m, nn.MaxPool2d))
    # Caffe's shapes at 224x224: pool1 -> 56, pool2 -> 28, pool3 -> 14, pool4 -> 7
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = model.norm1(model.pool1(model.conv1(x)))
        assert x.shape == (1, 64, 56, 56)
        x = model.pool2(model.norm2(model.conv2(model.conv2_reduce(x))))
        assert x.shape == (1, 192, 28, 28)
        x = model.pool3(model.inception3b(model.inception3a(x)))
        assert x.shape == (1, 480, 14, 14)


def test_bvlc_googlenet_grayscale_small_input():
    model = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_user_model_errors():
    with pytest.raises(DeepRebirthError, match="cannot import"):
        get_model("no_such_pkg.mod:factory")
    with pytest.raises(DeepRebirthError, match="no attribute"):
        get_model("user_models:nope")
    with pytest.raises(DeepRebirthError, match="not an nn.Module"):
        get_model("user_models:not_a_module")


# --- weights ---------------------------------------------------------------------------


def test_checkpoint_round_trips(tmp_path):
    src = get_model("user_models:tiny_cnn")
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    x = torch.randn(1, 3, 16, 16)
    for f in ("w.safetensors", "w.pt"):
        loaded = get_model("user_models:tiny_cnn", checkpoint=tmp_path / f)
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_says_which(tmp_path):
    state = get_model("user_models:tiny_cnn", num_classes=5).state_dict()
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"shape: fc.weight \(5, 8\) vs model \(10, 8\)"):
        get_model("user_models:tiny_cnn", checkpoint=tmp_path / "w.safetensors")
    del state["b1.bias"]
    state["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="missing: b1.bias.*unexpected: extra"):
        get_model("user_models:tiny_cnn", num_classes=5, checkpoint=tmp_path / "w.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused"):
        get_model("user_models:tiny_cnn", checkpoint=tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        get_model("user_models:tiny_cnn", checkpoint=tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        get_model("user_models:tiny_cnn", checkpoint=tmp_path / "bad.safetensors")


def test_pretrained_never_downloads():
    with pytest.raises(CheckpointError, match="not in the local cache"):
        get_model("squeezenet1_1", pretrained=True)


def test_pretrained_from_local_cache(tmp_path):
    import torchvision

    weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    reference = get_model("squeezenet1_1")
    torch.save(reference.state_dict(), cached)
    model = get_model("squeezenet1_1", pretrained=True)
    torch.testing.assert_close(model.state_dict(), reference.state_dict())


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v2", "resnet18"])
def test_torchvision_models_take_one_channel_as_the_gray_image_repeated(name):
    torch.manual_seed(0)
    rgb = get_model(name, num_classes=10)
    torch.manual_seed(0)
    gray = get_model(name, num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    assert next(m for m in gray.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
