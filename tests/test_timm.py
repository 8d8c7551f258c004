"""timm's CNNs by name: a sample of its families traces, plans, slims exactly and exports."""

import numpy as np
import pytest
import torch

from deeprebirth import get_model
from deeprebirth.errors import DeepRebirthError
from deeprebirth.export.onnx import to_onnx
from deeprebirth.export.onnx_file import ort_session
from deeprebirth.graph import example_input
from deeprebirth.slimming import load, save, slim
from deeprebirth.transforms.runner import relative_error

pytest.importorskip("timm")

#: One small model per family, 24 families: plain and pre-activation ResNets, RepVGG and
#: MobileOne-style re-parameterizable blocks, inverted residuals, SE and split attention,
#: dense and aggregated connections, a projection never read (DLA), modules timm marks as
#: not traceable (EfficientViT), weight-standardised convs (NFNet), ConvNeXt-style blocks.
FAMILIES = [
    "resnet10t",
    "mobilenetv3_small_050",
    "tinynet_e",
    "regnetx_002",
    "convnext_atto",
    "lcnet_050",
    "ghostnet_050",
    "dla34",
    "mnasnet_small",
    "mixnet_s",
    "darknet17",
    "resnest14d",
    "skresnet18",
    "hardcorenas_a",
    "ese_vovnet19b_slim_dw",
    "nf_resnet26",
    "efficientvit_b0",
    "repvgg_a0",
    "repghostnet_050",
    "dpn48b",
    "cs3darknet_focus_s",
    "hgnetv2_b0",
    "inception_next_atto",
    "tf_mobilenetv3_small_minimal_100",
]


def timm_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model(f"timm:{name}", num_classes=10)
    for m in model.modules():  # statistics away from identity, so that every fold matters
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.75, 1.25)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_timm_families_slim_exactly_and_by_default(name):
    model = timm_model(name)
    x = example_input(2, 3, 64)
    exact = slim(model, name=f"timm:{name}", input_size=64, exact_only=True)
    assert exact.report.applied and not exact.report.reverted
    with torch.no_grad():
        reference = model(x)
        assert relative_error(exact.model(x), reference) < 1e-4
        default = slim(model, name=f"timm:{name}", input_size=64)
        assert default.model(x).shape == reference.shape == (2, 10)


def test_summed_branches_of_repvgg_become_one_conv_and_export(tmp_path):
    model = timm_model("repvgg_a0")
    x = example_input(1, 3, 64)
    result = slim(
        model,
        name="timm:repvgg_a0",
        input_size=64,
        exact_only=True,
        model_config={"num_classes": 10},
    )
    merged = [e for e in result.plan.entries if e.kind == "sum_parallel"]
    assert len(merged) == 22 and all(e.id in result.report.applied for e in merged)
    assert {e.note for e in merged} == {"3x3 conv + 1x1 conv", "3x3 conv + 1x1 conv + batch-norm"}
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 22  # one conv per block, as timm's own reparameterize() leaves
    session = ort_session(to_onnx(result.model, x), threads=1)
    (out,) = session.run(None, {"input": x.numpy().astype(np.float32)})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(out), model(x)) < 1e-4
    save(result, tmp_path / "slim")
    with torch.no_grad():  # load() rebuilds the timm model by name and applies the plan
        torch.testing.assert_close(load(tmp_path / "slim")(x), result.model(x))


def test_unknown_timm_names_and_downloads_are_refused_in_one_line():
    with pytest.raises(DeepRebirthError, match="did you mean timm:resnet18"):
        get_model("timm:resnet18x")
    with pytest.raises(DeepRebirthError, match="never downloads"):
        get_model("timm:resnet18", pretrained=True)


def test_an_input_too_small_for_the_network_is_refused_in_one_line():
    with pytest.raises(DeepRebirthError, match="does not run on a 1x3x32x32 input"):
        slim(get_model("timm:inception_v3"), name="timm:inception_v3", input_size=32)
