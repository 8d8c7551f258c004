"""The README's results come from benchmarks/results/fashion_mnist_64.json, never by hand."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fashion_mnist_table import (  # noqa: E402
    paper_table,
    pareto_front,
    readme_results,
    readme_section,
    rebuilt,
    update_readme,
)

RESULTS = ROOT / "benchmarks/results/fashion_mnist_64.json"
MACHINE = {"cpu": "test cpu", "cores": 2, "torch": "t", "onnxruntime": "o"}


def test_readme_results_match_the_results_file():
    if RESULTS.is_file():
        assert readme_results(ROOT / "README.md") == readme_section(json.loads(RESULTS.read_text()))
    else:  # nothing measured yet: the README must not show numbers of its own
        assert readme_results(ROOT / "README.md") is None


def test_pareto_front():
    points = {
        "a": (1.0, 80.0),
        "b": (2.0, 85.0),
        "c": (3.0, 84.0),
        "d": (0.5, 70.0),
        "e": (2.0, 85.0),
    }
    assert pareto_front(points) == ["d", "a", "b", "e"]  # c: b is faster and more accurate


def fake_results():
    models = {
        "teacher": {"top1_val": 93.0, "top1_test": 92.5},
        "slimmed": {"top1_val": 92.8, "top1_test": 92.0},
        "slimmed_tucker_int8": {"top1_val": 92.1, "top1_test": 91.5},
        "slimmed_all_at_once": {"top1_val": 92.0, "top1_test": 91.0},
        "slimmed_depth": {"top1_val": 81.0, "top1_test": 80.5},  # trained, not timed yet
    }
    rows = {
        "teacher": {
            "ort_ms": 4.0,
            "executorch_ms": 6.0,
            "torch_ms": 8.0,
            "macs": 1e8,
            "params": 6e6,
            "peak_activation_mb": 1.0,
        },
        "slimmed": {
            "ort_ms": 2.0,
            "executorch_ms": 3.0,
            "torch_ms": 4.0,
            "macs": 5e7,
            "params": 6e6,
            "peak_activation_mb": 0.5,
        },
        "slimmed_tucker_int8": {"ort_ms": 1.0, "executorch_ms": 1.5},
        "slimmed_all_at_once": {"ort_ms": 2.0},
    }
    speed = {
        "runs": 5,
        "threads": 1,
        "sizes": {"64": rows, "224": rows},
        "command": "python benchmarks/reproduce.py speed",
        "date": "2026-11-25T00:00:00",
        "machine": MACHINE,
    }
    return {"models": models, "speed": speed}


def test_tables_from_a_results_file(tmp_path):
    results = fake_results()
    section = readme_section(results)
    assert (
        "| slimmed, layer-wise, default tuning recipe | 92.80 | 92.00 | -0.50 | 2.00 | 2.00x |"
        in section
    )
    assert "| slimmed + Tucker-2 + int8 | 92.10 | 91.50 | -1.00 | 1.00 | 4.00x |" in section
    # The README shows the headline models; the paper's table every model.
    assert "all merged layers at once" not in section and "All 4 timed models" in section
    table = paper_table(results)
    # int8 rows: ORT only, costs of the float twin (here none), top-1 at the trained size.
    assert (
        "| slimmed + Tucker-2 + int8 | — | — | 1.00 | 4.00x | 1.50 | 4.00x | — | — | — | 92.10 | 91.50 |"
        in table
    )
    assert "| slimmed, all merged layers at once |" in table
    # A model trained after the speed run is listed, with its accuracy, as not timed yet.
    assert "not timed yet" in table and "(top-1 val 81.00%, test 80.50%)" in table
    assert "| slimmed + depth compression" not in table
    assert "Tuned again since this speed run" not in table and "Earlier runs" not in table

    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- fashion_mnist_64:begin -->\nold\n<!-- fashion_mnist_64:end -->\nrest\n"
    )
    update_readme(readme, section)
    assert readme_results(readme) == section and readme.read_text().endswith("rest\n")
    readme.write_text("intro\n## Results\n\nolder results\n")  # the first time: inserted
    update_readme(readme, section)
    assert readme_results(readme) == section and readme.read_text().endswith("older results\n")


def test_the_accuracy_latency_plot_is_written(tmp_path):
    from fashion_mnist_table import plot_pareto

    path = plot_pareto(fake_results(), tmp_path / "p.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_replaced_and_retuned_models_are_said_so_in_the_paper_table():
    results = fake_results()
    models = results["models"]
    models["slimmed"]["date"] = "2026-12-05T00:00:00"  # tuned again after the speed run
    models["slimmed_2026_12_03"] = {
        "top1_val": 90.6,
        "top1_test": 90.0,
        "files_at_commit": "ab" * 20,
    }
    table = paper_table(results)
    assert "Tuned again since this speed run, same architecture" in table
    assert "slimmed, layer-wise, default tuning recipe." in table
    assert "(top-1 val 90.60%, test 90.00%; files at abababab" in table
    # a kept entry is not "trained since the speed run"
    assert "not timed yet" in table and "90.60%, test 90.00%)" not in table.split("not timed")[1]


def test_models_rebuilt_since_the_speed_run_lose_its_rows(tmp_path):
    """A slimmed directory whose applied plan differs from its plan at the speed run's commit
    timed another network; one that matches keeps its row, and so does a weights file; one
    the speed run did not time is not rebuilt (it is listed as not timed yet)."""
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    committed = "benchmarks/weights/fashion_mnist_64/slimmed"
    (tmp_path / "plan.json").write_text((ROOT / committed / "plan.json").read_text())
    later = {"date": "2026-12-07", "top1_val": 1.0, "top1_test": 1.0}
    results = {
        "speed": {
            "date": "2026-12-06",
            "commit": f"{head}+dirty",
            "sizes": {"64": {k: {} for k in ("same", "moved", "moved_int8", "teacher")}},
        },
        "models": {
            "same": {**later, "path": committed},
            "moved": {**later, "path": str(tmp_path)},  # not in that commit: another network
            "untimed": {**later, "path": str(tmp_path)},  # not in the speed run: listed apart
            "moved_int8": {**later, "from": "moved"},
            "teacher": {**later, "path": "benchmarks/weights/fashion_mnist_64/teacher.safetensors"},
        },
    }
    if (ROOT / committed / "plan.json").is_file():
        assert rebuilt(results) == {"moved", "moved_int8"}
    del results["speed"]["commit"]  # a run that did not record its commit: nothing to compare
    assert rebuilt(results) == set()


def test_tuning_cost_is_a_share_of_what_trained_the_model_slimmed():
    from fashion_mnist_table import cost_lines, share_of_training

    weights = "benchmarks/weights/fashion_mnist_64"
    results = {
        "models": {
            "teacher": {
                "path": f"{weights}/teacher.safetensors",
                "epochs": 18,
                "distill_epochs": 2,
            },
            "slimmed": {
                "path": f"{weights}/slimmed",
                "recipe": "recipes/fashion_mnist_64/slimmed.toml",
                "cost": {"minutes": 10.0, "passes": 5.0},
            },
            "slimmed_tucker": {
                "recipe": "recipes/fashion_mnist_64/slimmed_tucker.toml",
                "cost": {"minutes": 5.0, "passes": 2.0},
            },
        }
    }
    models = results["models"]
    assert share_of_training(results, models["slimmed"], 5.0) == ("teacher", 0.25)
    # built on the slimmed model: its passes count too
    assert share_of_training(results, models["slimmed_tucker"], 2.0) == ("teacher", 0.35)
    lines = cost_lines(results)
    assert any("| 5.00 | BVLC GoogLeNet (teacher), 20 | 0.25 |" in line for line in lines)
    assert share_of_training(results, {"recipe": "no/such.toml"}, 1.0) is None
