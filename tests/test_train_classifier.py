"""The training loop behind the committed teacher and references (benchmarks/)."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_classifier import TrainRecipe, train_classifier  # noqa: E402

RECIPE = TrainRecipe(input_size=8, in_chans=3, batch=16, warmup_steps=2, max_epochs=3, threads=1)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4, 10),
    )


def run(work, recipe=RECIPE, **kw):
    return train_classifier(small_net(), recipe, work, data="synthetic", log=lambda m: None, **kw)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    whole = run(tmp_path / "whole")
    assert whole["epochs"] == 3 and len(whole["history"]) == 3

    def killed_in_second_epoch(message):  # called once an epoch is evaluated, before its
        if message.startswith("epoch 2"):  # files are committed: a kill at the worst time
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(
            small_net(), RECIPE, tmp_path / "cut", data="synthetic", log=killed_in_second_epoch
        )
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["epoch"] == 1  # epoch 2 was not committed: it runs again
    assert {p.name for p in (tmp_path / "cut").iterdir()} >= set(state["files"].values())
    resumed = run(tmp_path / "cut")
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    # Same seed, same data order, same optimizer state: the same run.
    assert [r["val_top1"] for r in resumed["history"]] == [r["val_top1"] for r in whole["history"]]
    kept = {p.name for p in (tmp_path / "cut").glob("*.safetensors")}
    assert kept == set(json.loads((tmp_path / "cut" / "state.json").read_text())["files"].values())


def test_resuming_with_another_recipe_is_refused(tmp_path):
    run(tmp_path, dataclasses.replace(RECIPE, max_epochs=1))
    with pytest.raises(ValueError, match="another recipe"):
        run(tmp_path, dataclasses.replace(RECIPE, max_epochs=2))


def test_training_stops_when_validation_stops_improving(tmp_path):
    # A learning rate of zero: validation top-1 never moves, so the run stops after
    # `patience` epochs past the first, long before max_epochs.
    recipe = dataclasses.replace(RECIPE, lr=0.0, max_epochs=20, patience=2)
    r = run(tmp_path, recipe)
    assert r["epochs"] == 3 and r["best_epoch"] == 1


def test_distillation_runs_a_fixed_number_of_epochs(tmp_path):
    recipe = dataclasses.replace(RECIPE, distill_epochs=2)
    r = run(tmp_path, recipe, teacher=small_net())
    assert r["epochs"] == 2 and r["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)
