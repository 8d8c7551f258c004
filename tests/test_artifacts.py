"""One way to open a model: every command against every kind of model spec."""

from importlib.util import find_spec

import pytest
import torch

from deeprebirth import slimming
from deeprebirth.artifacts import KINDS, TORCH_KINDS, kind_of, open_model
from deeprebirth.cli import main
from deeprebirth.errors import DeepRebirthError
from deeprebirth.evaluation import save_weights
from deeprebirth.export.check import export
from deeprebirth.graph import example_input
from deeprebirth.zoo import get_model

NAME, SIZE = "user_models:tiny_cnn", 16
HAS_EXECUTORCH = find_spec("executorch") is not None


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    """One spec of each kind, all the same tiny network at 16x16."""
    root = tmp_path_factory.mktemp("specs")
    torch.manual_seed(0)
    model = get_model(NAME).eval()
    meta = {"model": NAME, "num_classes": 10, "in_chans": 3, "input_size": SIZE}
    save_weights(model, root / "w.safetensors", meta)
    result = slimming.slim(model, name=NAME, input_size=SIZE)
    slimming.save(result, root / "slimmed")
    x = example_input(1, 3, SIZE)
    export(model, root / "m.onnx", "onnx", x)
    kinds = {
        "zoo": NAME,
        "weights": str(root / "w.safetensors"),
        "slimmed": str(root / "slimmed"),
        "onnx": str(root / "m.onnx"),
    }
    if HAS_EXECUTORCH:
        export(model, root / "m.pte", "executorch", x)
        kinds["pte"] = str(root / "m.pte")
    return kinds


def test_each_kind_opens_with_what_is_known_about_it(specs):
    for kind, spec in specs.items():
        assert kind_of(spec) == kind
        a = open_model(spec)
        assert a.kind == kind
        assert a.runtime == {"onnx": "ort", "pte": "executorch"}.get(kind)
        if kind != "zoo":  # files describe their own input; a zoo spec says it or the zoo does
            assert a.input_shape == [1, 3, SIZE, SIZE]
            assert a.trained
        with torch.no_grad():
            assert a.model(example_input(1, 3, SIZE)).shape == (1, 10)
    assert open_model(specs["slimmed"]).label.endswith("/slimmed")
    assert open_model(specs["weights"]).label == NAME


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no/such/dir", "no such file"),
        ("missing.onnx", "no such ONNX file"),
        ("missing.safetensors", "no such file"),
    ],
)
def test_a_spec_that_names_nothing_is_one_error(spec, message):
    with pytest.raises(DeepRebirthError, match=message):
        open_model(spec)


def test_a_directory_that_is_not_slimmed_is_named(tmp_path):
    with pytest.raises(DeepRebirthError, match="not a slimmed one"):
        open_model(str(tmp_path))


def test_a_kind_a_command_cannot_use_is_refused_with_what_it_takes(specs):
    with pytest.raises(DeepRebirthError) as e:
        open_model(specs["onnx"], TORCH_KINDS, "deeprebirth plan")
    assert str(e.value) == (
        "deeprebirth plan takes a model name, a weights file or a slimmed directory; "
        f"{specs['onnx']} is an exported ONNX file"
    )


def command(name: str, spec: str, out) -> list[str]:
    size = ["--input-size", str(SIZE)]
    return {
        "profile": ["profile", spec, *size, "--runtime", "torch", "--runs", "2"],
        "plan": ["plan", spec, *size],
        "slim": ["slim", spec, *size, "--no-report", "--out", str(out / "s")],
        "export": ["export", spec, *size, "-o", str(out / "m.onnx")],
        "evaluate": ["evaluate", spec, *size, "--data", "synthetic", "--split", "val"],
        "bench": ["bench", NAME, spec, *size, "--runs", "2"],
    }[name]


#: The kinds each command takes: the PyTorch ones where it changes or traces the model, any
#: where it only runs it.
TAKES = {
    "profile": TORCH_KINDS,
    "plan": TORCH_KINDS,
    "slim": TORCH_KINDS,
    "export": TORCH_KINDS,
    "evaluate": KINDS,
    "bench": KINDS,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(TAKES))
def test_every_command_takes_every_kind_that_makes_sense_for_it(
    specs, name, kind, capsys, tmp_path
):
    if kind not in specs:
        pytest.skip("executorch is not installed")
    code = main(command(name, specs[kind], tmp_path))
    _, err = capsys.readouterr()
    if kind in TAKES[name]:
        assert code == 0, err
    else:
        assert code == 2 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "takes a model name" in lines[0], err
        assert lines[0].endswith(
            f"{specs[kind]} is an exported {'ONNX file' if kind == 'onnx' else 'ExecuTorch program'}"
        )
