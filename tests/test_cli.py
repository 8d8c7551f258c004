import json
import pickle
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch
from safetensors.torch import save_file

from deeprebirth import data
from deeprebirth.cli import build_parser, main
from deeprebirth.flags import recipe_from_args
from deeprebirth.tuning import TuneConfig
from deeprebirth.zoo import get_model

#: The short runs that choose the fine-tune's learning rate (tune.finetune_lr unset).
LR_CHOICE = [f"finetune_lr_{lr:g}" for lr in TuneConfig().finetune_lr_choices]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "deeprebirth", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("models", "profile", "data", "demo"):
        assert cmd in out


def test_models(capsys):
    code, out, _ = run_cli(capsys, "models", "googlenet")
    assert code == 0 and "bvlc_googlenet" in out and "googlenet" in out


def test_profile_writes_json_and_plot(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys,
        "profile",
        "user_models:tiny_cnn",
        "--input-size",
        "16",
        "--runs",
        "3",
        "--json",
        str(tmp_path / "p.json"),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert code == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["model"] == "user_models:tiny_cnn"
    assert set(result["runtimes"]) == {"torch", "ort"}
    assert result["command"].startswith("deeprebirth")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert "non-tensor" in out and "latency" in out


def one_line_error(code, err, pattern):
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # progress lines (… doing X) may come before it
    assert last.startswith("deeprebirth: error:"), err
    assert pattern in last
    assert sum("error" in line for line in err.splitlines()) == 1, err


def test_unknown_model_is_one_line(capsys):
    code, _, err = run_cli(capsys, "profile", "googlnet", "--runtime", "torch")
    one_line_error(code, err, "did you mean")


def test_bad_checkpoint_is_one_line(capsys, tmp_path):
    save_file(
        get_model("user_models:tiny_cnn", num_classes=3).state_dict(), tmp_path / "w.safetensors"
    )
    code, _, err = run_cli(
        capsys, "profile", "user_models:tiny_cnn", "--checkpoint", str(tmp_path / "w.safetensors")
    )
    one_line_error(code, err, "fc.weight")


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/deeprebirth-pwned", "w"))


def test_code_pickle_refused(capsys, tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    code, _, err = run_cli(
        capsys, "profile", "user_models:tiny_cnn", "--checkpoint", str(tmp_path / "evil.pt")
    )
    one_line_error(code, err, "refused")


def test_untraceable_model_is_one_line(capsys):
    code, _, err = run_cli(capsys, "profile", "user_models:untraceable", "--input-size", "8")
    one_line_error(code, err, "torch.fx cannot trace")


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPREBIRTH_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    code, _, err = run_cli(capsys, "data", "fashion-mnist")
    one_line_error(code, err, "apt-get install dataset-fashion-mnist")
    code, _, err = run_cli(capsys, "data", str(tmp_path / "no-such-dir"))
    one_line_error(code, err, "does not exist")


def test_data_summary(capsys):
    code, out, _ = run_cli(capsys, "data", "synthetic", "--input-size", "12")
    assert code == 0 and "(3, 12, 12)" in out


def test_too_small_input_is_one_line(capsys):
    code, _, err = run_cli(
        capsys, "profile", "bvlc_alexnet", "--input-size", "4", "--runtime", "torch"
    )
    one_line_error(code, err, "input")


def test_debug_shows_traceback():
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", "profile", "googlnet"])


def test_plan_slim_bench(capsys, tmp_path):
    model = "user_models:tiny_cnn"
    code, out, _ = run_cli(
        capsys, "plan", model, "--input-size", "16", "-o", str(tmp_path / "plan.json")
    )
    assert code == 0 and "streamline" in out and "branch_pool" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["version"] == 1 and plan["input_shape"] == [1, 3, 16, 16]
    plan["entries"][0]["enabled"] = False
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    code, _, err = run_cli(
        capsys, "slim", model, "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "s")
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["entries"][0]["id"] not in saved["applied"]
    code, out, err = run_cli(
        capsys,
        "bench",
        model,
        str(tmp_path / "s"),
        "--runs",
        "3",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert code == 0, err
    r = json.loads((tmp_path / "b.json").read_text())
    for runtime in ("torch", "ort"):
        d = r["runtimes"][runtime]
        assert d["speedup"] == pytest.approx(d["a_ms"] / d["b_ms"])
    assert r["memory"]["ratio"] == pytest.approx(r["memory"]["a_mb"] / r["memory"]["b_mb"])
    code, out, _ = run_cli(
        capsys, "profile", str(tmp_path / "s"), "--runs", "2", "--runtime", "torch"
    )
    assert code == 0 and "latency" in out


def test_slim_exact_only(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "slim",
        "user_models:tiny_cnn",
        "--input-size",
        "16",
        "--exact-only",
        "--out",
        str(tmp_path / "s"),
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert all(e["exact"] for e in saved["entries"] if e["id"] in saved["applied"])


def test_slim_switches_plan_entries_by_id(capsys, tmp_path):
    tiny = ("user_models:tiny_cnn", "--input-size", "16")
    run_cli(capsys, "plan", *tiny, "-o", str(tmp_path / "p.json"))
    entries = json.loads((tmp_path / "p.json").read_text())["entries"]
    off = next(e["id"] for e in entries if not e["exact"] and e["enabled"])
    out = tmp_path / "s"
    code, _, err = run_cli(
        capsys, "slim", *tiny, "--disable", off, "--no-report", "--out", str(out)
    )
    assert code == 0, err
    saved = json.loads((out / "plan.json").read_text())
    assert off not in saved["applied"] and saved["applied"]
    assert not next(e for e in saved["entries"] if e["id"] == off)["enabled"]
    kind = off.split(":")[0]
    code, _, err = run_cli(capsys, "slim", *tiny, "--enable", f"{kind}:nope", "--out", str(out))
    one_line_error(code, err, f"no entry {kind}:nope; its {kind} entries: ")
    assert off in err
    code, _, err = run_cli(
        capsys, "slim", *tiny, "--enable", off, "--disable", off, "--out", str(out)
    )
    one_line_error(code, err, "--enable and --disable both name")


def test_slim_bad_inputs(capsys, tmp_path):
    (tmp_path / "newer.json").write_text(json.dumps({"version": 99, "entries": []}))
    code, _, err = run_cli(
        capsys,
        "slim",
        "user_models:tiny_cnn",
        "--plan",
        str(tmp_path / "newer.json"),
        "--out",
        str(tmp_path / "s"),
    )
    one_line_error(code, err, "newer deeprebirth")
    run_cli(
        capsys, "plan", "user_models:tiny_cnn", "--input-size", "16", "-o", str(tmp_path / "p.json")
    )
    code, _, err = run_cli(
        capsys,
        "slim",
        "bvlc_googlenet",
        "--plan",
        str(tmp_path / "p.json"),
        "--out",
        str(tmp_path / "s"),
    )
    one_line_error(code, err, "is a plan for user_models:tiny_cnn")
    code, _, err = run_cli(
        capsys, "slim", "user_models:untraceable", "--input-size", "8", "--out", str(tmp_path / "s")
    )
    one_line_error(code, err, "torch.fx cannot trace")
    assert not (tmp_path / "s").exists()  # nothing written half-way


def test_slim_with_tuning_and_evaluate(capsys, tmp_path):
    from deeprebirth.evaluation import save_weights

    teacher = get_model("user_models:tiny_cnn", num_classes=10)
    weights = save_weights(
        teacher,
        tmp_path / "t.safetensors",
        {"model": "user_models:tiny_cnn", "num_classes": 10, "in_chans": 3, "input_size": 16},
    )
    common = [
        "slim",
        "user_models:tiny_cnn",
        "--checkpoint",
        str(weights),
        "--data",
        "synthetic",
        "--max-batches",
        "2",
        "--finetune-batches",
        "2",
    ]
    code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "s"))
    assert code == 0, err
    report = json.loads((tmp_path / "s" / "tune_report.json").read_text())
    assert report["tuning"]["stages"][-1]["stage"] == "finetune"
    assert {"teacher", "slimmed"} == set(report["accuracy"])
    assert (tmp_path / "s" / "tune_log.jsonl").is_file() and not (tmp_path / "s.partial").exists()
    # A finished run continued: its tuned weights, the fine-tune only.
    more = [*common, "--no-report", "--start-from"]
    code, out, err = run_cli(capsys, *more, str(tmp_path / "s"), "--out", str(tmp_path / "s2"))
    assert code == 0, err
    report = json.loads((tmp_path / "s2" / "tune_report.json").read_text())
    assert report["tuning"]["start_from"] == str(tmp_path / "s")
    assert [r["stage"] for r in report["tuning"]["stages"]] == [*LR_CHOICE, "finetune"]
    code, _, err = run_cli(capsys, *more, str(weights), "--out", str(tmp_path / "s3"))
    one_line_error(code, err, "not a slimmed model directory")
    for target in (str(weights), str(tmp_path / "s")):
        code, out, err = run_cli(
            capsys, "evaluate", target, "--data", "synthetic", "--json", str(tmp_path / "e.json")
        )
        assert code == 0, err
        r = json.loads((tmp_path / "e.json").read_text())
        assert r["n"] == 64 and 0 <= r["top1"] <= r["top5"] <= 1


def test_evaluate_bad_inputs(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "evaluate",
        "user_models:tiny_cnn",
        "--num-classes",
        "3",
        "--input-size",
        "16",
        "--data",
        "synthetic",
    )
    one_line_error(code, err, "3 outputs")
    code, _, err = run_cli(
        capsys, "evaluate", "user_models:tiny_cnn", "--data", str(tmp_path / "nope")
    )
    one_line_error(code, err, "does not exist")


def saved_reference(tmp_path, model: str, num_classes: int, input_size: int):
    """A "trained" reference network: a weights file that names its model."""
    from deeprebirth.evaluation import save_weights
    from deeprebirth.zoo import get_model

    meta = {"model": model, "num_classes": num_classes, "in_chans": 3, "input_size": input_size}
    path = tmp_path / f"reference_{num_classes}.safetensors"
    return save_weights(get_model(model, num_classes=num_classes), path, meta)


@pytest.mark.full_report
def test_slim_writes_a_report_with_the_runs_numbers(capsys, tmp_path):
    trained = saved_reference(tmp_path, "squeezenet1_1", num_classes=10, input_size=32)
    code, _, err = run_cli(
        capsys, "slim", "user_models:tiny_cnn", "--input-size", "32", "--data", "synthetic",
        "--max-batches", "1", "--finetune-batches", "1", "--report-runs", "3",
        "--references", f"{trained},mobilenet_v2", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "s"
    data = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for name in ("report_kinds.png", "report_accuracy_latency.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    runtimes = ("torch", "ort", "executorch") if find_spec("executorch") else ("torch", "ort")
    assert tuple(data["latency"]) == runtimes  # ExecuTorch too, when the extra is installed
    for runtime in runtimes:
        assert f"{data['latency'][runtime]['slimmed']['median_ms']:.2f}" in md
        assert data["by_kind"]["original"][runtime]["lrn"]["ms"] >= 0
        assert "lrn" not in data["by_kind"]["slimmed"][runtime]  # streamlined away
    assert f"{100 * data['accuracy']['slimmed']['top1']:.2f}" in md
    assert "squeezenet1_1" in data["latency"]["ort"]  # 32x32 is enough for the references
    assert data["references_trained"] == ["squeezenet1_1"]
    assert f"{100 * data['accuracy']['squeezenet1_1']['top1']:.2f} |" in md
    assert "random weights (latency only, accuracy not measured): mobilenet_v2" in md
    assert "no energy figure" in md or "mJ" in md


def test_a_reference_that_does_not_fit_the_data_loses_no_work(capsys, tmp_path):
    three_classes = saved_reference(tmp_path, "user_models:tiny_cnn", num_classes=3, input_size=16)
    code, _, err = run_cli(
        capsys, "slim", "user_models:tiny_cnn", "--input-size", "16", "--data", "synthetic",
        "--max-batches", "1", "--finetune-batches", "1", "--report-runs", "2",
        "--references", str(three_classes), "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "s" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert "user_models:tiny_cnn" in report["latency"]["ort"]  # measured, but not evaluated
    assert set(report["accuracy"]) == {"teacher", "slimmed"}


def test_slim_checks_references_before_any_work(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "slim", "user_models:tiny_cnn", "--references", "squeezenet1_1,nosuchnet",
        "--out", str(tmp_path / "s"),
    )  # fmt: skip
    one_line_error(code, err, "nosuchnet")
    assert not (tmp_path / "s").exists()


def test_slim_tucker_all_at_once_budget_fp16(capsys, tmp_path):
    from safetensors import safe_open

    code, _, err = run_cli(
        capsys, "slim", "user_models:tiny_cnn", "--input-size", "16", "--tucker", "--rank-ratio", "0.25",
        "--data", "synthetic", "--all-at-once", "--budget-minutes", "0.05", "--no-fit-budget", "--fp16-weights",
        "--no-report", "--no-eval", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "s"
    plan = json.loads((out / "plan.json").read_text())
    assert any(e["kind"] == "tucker" and e["id"] in plan["applied"] for e in plan["entries"])
    stages = json.loads((out / "tune_report.json").read_text())["tuning"]["stages"]
    assert [s["stage"] for s in stages] == ["all_at_once", *LR_CHOICE, "finetune"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())  # noqa: SIM118 (not a dict)
    assert not (out / "report.md").exists()


def test_slim_a_slimmed_directory_and_load_it_from_anywhere(capsys, tmp_path, monkeypatch):
    import shutil

    from deeprebirth.plan import PlanError
    from deeprebirth.slimming import load

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["slim", "user_models:tiny_cnn", "--input-size", "16", "--out", "runs/a"]) == 0
    args = ["slim", "runs/a", "--tucker", "--rank-ratio", "0.5", "--no-report", "--out", "runs/b"]
    assert main(args) == 0
    assert json.loads((work / "runs/b/plan.json").read_text())["model"] == "runs/a"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        here = load("runs/b")(x)
    monkeypatch.chdir(tmp_path)  # "runs/a" no longer resolves from here: found beside b
    with torch.no_grad():
        torch.testing.assert_close(load(work / "runs/b")(x), here)
    shutil.rmtree(work / "runs/a")
    with pytest.raises(PlanError, match="neither a known model nor a slimmed directory"):
        load(work / "runs/b")
    capsys.readouterr()


def test_tucker_options_need_tucker_and_valid_shares(capsys):
    code, _, err = run_cli(capsys, "plan", "user_models:tiny_cnn", "--pointwise-rank-ratio", "0.5")
    one_line_error(code, err, "--pointwise-rank-ratio needs --tucker")
    for flag, value in [("--pointwise-rank-ratio", "0"), ("--finetune-share", "1.5")]:
        with pytest.raises(SystemExit) as e:
            main(["slim", "user_models:tiny_cnn", flag, value, "--out", "x"])
        assert e.value.code == 2


def test_plan_with_pointwise_tucker_factors_the_1x1_convs(capsys, tmp_path):
    args = [
        "--input-size",
        "16",
        "--tucker",
        "--rank-ratio",
        "0.5",
        "--pointwise-rank-ratio",
        "0.25",
    ]
    code, _, err = run_cli(
        capsys, "plan", "user_models:tiny_cnn", *args, "-o", str(tmp_path / "p.json")
    )
    assert code == 0, err
    tucker = [
        e for e in json.loads((tmp_path / "p.json").read_text())["entries"] if e["kind"] == "tucker"
    ]
    assert any(e["geometry"]["layers"] == 2 for e in tucker), tucker


def test_evaluate_on_the_validation_split(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "evaluate",
        "user_models:tiny_cnn",
        "--input-size",
        "16",
        "--data",
        "synthetic",
        "--split",
        "val",
        "--json",
        str(tmp_path / "e.json"),
    )
    assert code == 0, err
    assert "(val)" in out and json.loads((tmp_path / "e.json").read_text())["split"] == "val"


def test_slim_on_a_missing_gpu_is_one_line(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(
        capsys,
        "slim",
        "user_models:tiny_cnn",
        "--input-size",
        "16",
        "--data",
        "synthetic",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "s"),
    )
    one_line_error(code, err, "no CUDA GPU")
    assert not (tmp_path / "s").exists()


def test_slim_from_scratch_records_it(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "slim",
        "user_models:tiny_cnn",
        "--input-size",
        "16",
        "--data",
        "synthetic",
        "--from-scratch",
        "--max-batches",
        "1",
        "--finetune-batches",
        "1",
        "--no-report",
        "--out",
        str(tmp_path / "s"),
    )
    assert code == 0, err
    report = json.loads((tmp_path / "s" / "tune_report.json").read_text())
    assert report["tuning"]["config"]["reinit"] is True
    assert "val_top1" in report["accuracy"]["slimmed"]


def test_every_command_has_a_working_help(capsys):
    import argparse

    from deeprebirth.cli import build_parser, main

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) >= 5
    for command in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0, command
        assert "usage:" in capsys.readouterr().out, command


def test_labels_that_are_not_the_models_classes_are_left_out_of_the_fine_tune(capsys, tmp_path):
    # synthetic data has 10 classes; the model has 5 outputs: distil the logits alone
    args = ["slim", "user_models:tiny_cnn", "--num-classes", "5", "--input-size", "16"]
    args += ["--data", "synthetic", "--no-eval", "--no-report", "--max-batches", "1"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "not the model's outputs" in err and "use_labels off" in err
    report = json.loads((tmp_path / "s" / "tune_report.json").read_text())
    assert report["tuning"]["config"]["use_labels"] is False


def test_out_of_reach_is_a_flag(capsys):
    slim = ["slim", "user_models:tiny_cnn", "--latency-budget", "1", "--out", "o"]
    parse = build_parser().parse_args
    assert recipe_from_args(parse(slim)).select.out_of_reach == "error"
    fastest = recipe_from_args(parse([*slim, "--out-of-reach", "fastest"]))
    assert fastest.select.out_of_reach == "fastest"
    with pytest.raises(SystemExit) as exit_:
        parse([*slim, "--out-of-reach", "closest"])
    assert exit_.value.code == 2 and "invalid choice: 'closest'" in capsys.readouterr().err
