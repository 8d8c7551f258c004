"""Recipes: typed TOML configurations of a whole run, and the pipeline that runs them."""

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from deeprebirth.cli import main
from deeprebirth.config import ConfigError
from deeprebirth.recipe import ModelConfig, Recipe, recipe_reference

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def one_line_error(code, err, pattern):
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("deeprebirth: error:") and pattern in last, err


def test_round_trip_through_toml():
    recipe = Recipe(
        model=ModelConfig(name="bvlc_googlenet", input_size=64, checkpoint="t.safetensors"),
        out="runs/x",
    )
    recipe.plan.tucker, recipe.plan.rank_ratio = True, 0.5
    recipe.tune.max_batches, recipe.tune.budget_minutes = 7, 1.5
    recipe.report.references = ["squeezenet1_1"]
    assert Recipe.from_toml_text(recipe.to_toml("a header\nof two lines")) == recipe


def test_optional_keys_default_to_none():
    """TOML has no null: a None value is written as an absent key, which must read back as
    None, so every optional key's default is None."""

    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp)
            elif type(None) in typing.get_args(tp):
                yield f

    optional = list(walk(Recipe))
    assert optional and all(f.default is None for f in optional)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[model]\nname = "a"\n[plan]\ntuker = true', "unknown key plan.tuker"),
        ('[model]\nname = "a"\n[tune]\nlr = "fast"', "tune.lr should be a number"),
        ('[model]\nname = "a"\n[tune]\nmax_batches = -1', "tune.max_batches must be at least 0"),
        ('[model]\nname = "a"\n[tune]\nlinearize_ramp = 2.0', "tune.linearize_ramp must be in"),
        ('[model]\nname = "a"\n[plan]\nrank_ratio = 0.5', "plan.rank_ratio needs plan.tucker"),
        (
            '[model]\nname = "a"\n[plan]\ntucker = true\nrank_ratio = 1.5',
            "plan.rank_ratio must be in (0, 1]",
        ),
        (
            '[model]\nname = "a"\n[tune]\nstart_from = "d"\nfinetune_batches = 0',
            "set tune.finetune_batches",
        ),
        ('[model]\nname = "a"\n[tune]\nstart_from = "d"', "it needs data.spec"),
        ('[model]\nname = "a"\n[select]\ncost_batches = 5', "it needs data.spec"),
        ('[model]\nname = "a"\n[select]\ncost_batches = -1', "select.cost_batches must be"),
        (
            '[model]\nname = "a"\n[plan]\ndisable = ["x"]\n[select]\nlatency_budget_share = 0.5',
            "plan.enable/plan.disable choose entries by hand",
        ),
        ('[model]\nname = "a"\n[report]\nruntimes = ["tflite"]', "'tflite' is not one of"),
        (
            '[model]\nname = "a"\n[select]\nout_of_reach = "closest"',
            "select.out_of_reach: 'closest' is not one of error, fastest",
        ),
        ('[model]\nname = "a"\n[export]\nint8 = true\nformats = ["onnx"]', "needs data.spec"),
        ("model = 3", "[model] must be a table"),
        ("[data]\nspec = 'synthetic'", "missing key model"),
        ('version = 2\n[model]\nname = "a"', "reads version 1"),
        ('[model\nname = "a"', "is not valid TOML"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as e:
        Recipe.load(write(tmp_path, text))
    assert message in str(e.value)


def test_overrides_and_default_out(tmp_path):
    path = write(tmp_path, '[model]\nname = "user_models:tiny_cnn"\n')
    recipe = Recipe.load(
        path, ["tune.max_batches=5", "plan.tucker=true", "data.spec=synthetic", "out='o'"]
    )
    assert (recipe.tune.max_batches, recipe.plan.tucker, recipe.data.spec) == (5, True, "synthetic")
    assert recipe.out == "o" and Recipe.load(path).out == "runs/r"
    with pytest.raises(ConfigError, match="unknown key tune.max_batchs"):
        Recipe.load(path, ["tune.max_batchs=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        Recipe.load(path, ["tune.max_batches"])


def test_run_a_recipe_and_rerun_its_resolved_copy(capsys, tmp_path):
    path = write(
        tmp_path,
        f"""
out = "{tmp_path / "a"}"
[model]
name = "user_models:tiny_cnn"
input_size = 16
[data]
spec = "synthetic"
[tune]
max_batches = 2
finetune_batches = 1
[profile]
enabled = true
runtimes = ["torch"]
runs = 3
[export]
formats = ["onnx"]
[report]
enabled = false
""",
    )
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    a = tmp_path / "a"
    made = ("recipe.toml", "plan.json", "model.safetensors", "model.onnx", "tune_report.json")
    for name in (*made, "profile.json", "profile.png"):
        assert (a / name).is_file(), name
    saved = Recipe.load(a / "recipe.toml")
    assert (saved.model.in_chans, saved.model.input_size) == (3, 16)  # resolved
    assert saved.tune.max_batches == 2 and saved.export.formats == ["onnx"]
    # The resolved recipe makes the same model again.
    assert main(["run", str(a / "recipe.toml"), "--set", f"out='{tmp_path / 'b'}'"]) == 0
    plans = [json.loads((tmp_path / d / "plan.json").read_text()) for d in ("a", "b")]
    assert plans[0]["applied"] == plans[1]["applied"]
    out = capsys.readouterr().out
    assert "parity with PyTorch" in out and "top-1" in out


def test_data_augment_reaches_the_tuning_images_only(capsys, tmp_path, monkeypatch):
    from deeprebirth import data, pipeline

    asked = []
    real = data.get_dataset

    def recording(spec, split="train", **kw):
        asked.append((split, kw.get("augment", False)))
        return real(spec, split, **kw)

    monkeypatch.setattr(pipeline, "get_dataset", recording)  # where the run reads data
    path = write(tmp_path, '[model]\nname = "user_models:tiny_cnn"\ninput_size = 16\n')
    sets = ("data.spec='synthetic'", "data.augment=true", "tune.max_batches=1",
            "tune.finetune_batches=1", "report.enabled=false", f"out='{tmp_path / 'a'}'")  # fmt: skip
    assert main(["run", str(path), *(a for s in sets for a in ("--set", s))]) == 0
    assert ("train", True) in asked
    # The probe that keeps or rolls back a stage, and the accuracy reported, see plain images.
    assert {s for s, augment in asked if augment} == {"train"}
    assert {"val", "test"} <= {s for s, _ in asked}
    assert Recipe.load(tmp_path / "a" / "recipe.toml").data.augment


def test_slim_flags_are_recipe_keys(capsys, tmp_path):
    args = ["slim", "user_models:tiny_cnn", "--input-size", "16", "--tucker", "--no-report"]
    assert main([*args, "--max-batches", "3", "--out", str(tmp_path / "s")]) == 0
    recipe = Recipe.load(tmp_path / "s" / "recipe.toml")
    assert recipe.plan.tucker and recipe.tune.max_batches == 3 and not recipe.report.enabled
    assert recipe.model.name == "user_models:tiny_cnn"
    out = capsys.readouterr()
    assert "recipe.toml" in out.err
    # Help texts and defaults come from the recipe.
    from deeprebirth.cli import build_parser

    slim = build_parser()._subparsers._group_actions[0].choices["slim"]
    helps = {a.dest: a.help for a in slim._actions}
    assert helps["tune.max_batches"] == "batches per stage, at most (0: no stages) (default 200)"
    parsed = vars(slim.parse_args(["m", "--out", "o", "--linearize-batches", "5"]))
    assert parsed["tune.linearize_batches"] == 5


def test_run_errors_are_one_line(capsys, tmp_path):
    code = main(["run", str(tmp_path / "missing.toml")])
    one_line_error(code, capsys.readouterr().err, "no recipe at")
    path = write(tmp_path, '[model]\nname = "user_models:tiny_cnn"\n[tune]\nlr = -1.0\n')
    one_line_error(main(["run", str(path)]), capsys.readouterr().err, "tune.lr must be positive")
    # Given as flags, the error names the flag.
    code = main(["slim", "user_models:tiny_cnn", "--lr", "-1", "--out", str(tmp_path / "s")])
    one_line_error(code, capsys.readouterr().err, "--lr must be positive")
    assert not (tmp_path / "s").exists()


def test_a_latency_budget_is_in_ms_or_a_share_or_another_models_not_two(capsys, tmp_path):
    both = "[select]\nlatency_budget_ms = 5.0\nlatency_budget_share = 0.75\n"
    path = write(tmp_path, '[model]\nname = "user_models:tiny_cnn"\n' + both)
    one_line_error(main(["run", str(path)]), capsys.readouterr().err, "give one budget, not 2")
    with pytest.raises(SystemExit) as e:
        main(["slim", "user_models:tiny_cnn", "--latency-budget-share", "1.5", "--out", "x"])
    assert e.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
    recipe = Recipe.load(
        write(tmp_path, '[model]\nname = "x"\n[select]\nlatency_budget_share = 0.5\n')
    )
    assert recipe.select.selects() and recipe.select.latency_budget_ms is None


def test_the_demo_recipe_loads_and_falls_back_to_speed_only(tmp_path):
    from deeprebirth.pipeline import DEMO_RECIPE, demo_recipe

    assert DEMO_RECIPE.is_file()
    recipe = Recipe.load(DEMO_RECIPE)
    assert recipe.model.name == "bvlc_googlenet" and recipe.export.formats == ["onnx"]
    missing = f"model.checkpoint='{tmp_path / 'none.safetensors'}'"
    speed_only, why = demo_recipe(DEMO_RECIPE, [missing])
    assert "no teacher weights" in why and "speed-only" in why
    assert speed_only.model.checkpoint is None and speed_only.data.spec is None


def test_the_key_reference_is_generated():
    assert (ROOT / "docs/recipes.md").read_text() == recipe_reference()
    assert "`tune.max_batches`" in recipe_reference()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("*.toml")), ids=lambda p: p.stem)
def test_every_committed_recipe_loads(path):
    from deeprebirth.config import read_toml

    if "train" in read_toml(path):  # how a classifier is trained (benchmarks/train_classifier.py)
        import sys

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from reproduce import SIZE, train_recipe

        assert train_recipe().input_size == SIZE
        return
    recipe = Recipe.load(path)
    assert recipe.model.name and recipe.out


def test_a_slimmed_directory_is_a_trained_reference(capsys, tmp_path):
    """What the demo does: the live result beside a committed full-recipe model."""
    base = ["--input-size", "16", "--data", "synthetic", "--max-batches", "1"]
    first = ["slim", "user_models:tiny_cnn", *base, "--finetune-batches", "0", "--no-report"]
    assert main([*first, "--out", str(tmp_path / "full")]) == 0
    args = ["slim", "user_models:tiny_cnn", *base, "--finetune-batches", "0"]
    args += ["--references", str(tmp_path / "full"), "--report-runs", "2"]
    assert main([*args, "--out", str(tmp_path / "live")]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "live" / "report.json").read_text())
    name = f"{tmp_path.name}/full"
    assert report["references_trained"] == [name] and name in report["accuracy"]
    assert f"{name} (reference): top-1" in capsys.readouterr().out
