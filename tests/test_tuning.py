import json

import pytest
import torch
from torch import nn

from deeprebirth import get_dataset, get_loader, get_model
from deeprebirth.config import ConfigError
from deeprebirth.evaluation import evaluate
from deeprebirth.graph import capture
from deeprebirth.slimming import slim, tune
from deeprebirth.tuning import TuneConfig, find_stages, truncate
from deeprebirth.tuning import trainer as trainer_module


def tiny_setup(num_classes=10):
    teacher = get_model("user_models:tiny_cnn", num_classes=num_classes)
    result = slim(teacher, name="user_models:tiny_cnn", input_size=16)
    data = get_dataset(
        "synthetic", "train", input_size=16, in_chans=3, synthetic_size=64, num_classes=num_classes
    )
    return teacher, result, get_loader(data, batch_size=16, shuffle=True)


def stages_of(teacher, result, shape):
    """The layer-wise stages of a slimmed ``result`` of ``teacher`` for inputs of ``shape``."""
    return find_stages(
        result.plan, result.report.applied, capture(teacher), result.model, torch.zeros(*shape)
    )


def boundary_error(teacher, result, stage, x):
    with torch.no_grad():
        s = truncate(result.model, stage.boundary)(x)
        t = truncate(capture(teacher), stage.boundary)(x)
    return sum(((a - b) ** 2).mean().item() for a, b in zip(s, t, strict=True))


def test_stages_follow_the_graph_from_input_to_output():
    teacher = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    result = slim(teacher, input_size=32, in_chans=1)
    stages = stages_of(teacher, result, (1, 1, 32, 32))
    assert stages[0].id == "streamline:conv1.conv" and stages[0].boundary == ["conv2_reduce.conv"]
    order = {n.target: i for i, n in enumerate(result.model.graph.nodes) if n.op == "call_module"}
    firsts = [order[s.trainable[0]] for s in stages]
    assert firsts == sorted(firsts)
    assert any("block_pool:pool3" in s.id for s in stages)


def test_a_stage_lowers_the_reconstruction_error(tmp_path):
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    stages = stages_of(teacher, result, (1, 3, 16, 16))
    x = next(iter(loader))[0]
    before = [boundary_error(teacher, result, s, x) for s in stages]
    records = tune(
        result,
        teacher,
        loader,
        TuneConfig(max_batches=40, epochs_per_stage=20, finetune_batches=0),
        tmp_path,
    )
    after = [boundary_error(teacher, result, s, x) for s in stages]
    assert len(records) == len(stages) >= 1
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    log = [json.loads(line) for line in (tmp_path / "tune_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == [s.id for s in stages]


def test_resume_after_an_interruption(tmp_path):
    teacher = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    data = get_dataset(
        "synthetic", "train", input_size=32, in_chans=1, synthetic_size=8, num_classes=10
    )
    loader = get_loader(data, batch_size=4)
    config = TuneConfig(max_batches=1, finetune_batches=1)

    def interrupt_in_third_stage(stage, step, total, loss):
        if len(seen) == 2 and stage not in seen:
            raise KeyboardInterrupt
        seen.add(stage)

    seen: set = set()
    result = slim(teacher, input_size=32, in_chans=1)
    with pytest.raises(KeyboardInterrupt):
        tune(result, teacher, loader, config, tmp_path, progress=interrupt_in_third_stage)
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["completed"]) == 2 and not state["finetuned"]

    ran: list = []
    fresh = slim(teacher, input_size=32, in_chans=1)
    records = tune(
        fresh, teacher, loader, config, tmp_path, resume=True, progress=lambda s, *a: ran.append(s)
    )
    assert state["completed"][0] not in ran and state["completed"][1] not in ran
    final = json.loads((tmp_path / "state.json").read_text())
    stages = stages_of(teacher, fresh, (1, 1, 32, 32))
    assert final["completed"] == [s.id for s in stages] and final["finetuned"]
    assert records[-1]["stage"] == "finetune"


def test_a_long_fine_tune_resumes_from_its_last_pass_exactly(tmp_path):
    """Interrupted in its third pass, a three-pass fine-tune continues from the end of the
    second (weights, Adam state, schedule) and ends where an uninterrupted run ends."""
    teacher = get_model("user_models:tiny_cnn", num_classes=10)
    data = get_dataset(
        "synthetic", "train", input_size=16, in_chans=3, synthetic_size=64, num_classes=10
    )
    loader = get_loader(data, batch_size=16)  # 4 batches a pass, the same order every pass
    config = TuneConfig(max_batches=0, finetune_batches=100, finetune_epochs=3, use_labels=True)

    def tuned(work, progress=None, resume=False):
        result = slim(teacher, name="user_models:tiny_cnn", input_size=16)
        records = tune(result, teacher, loader, config, work, progress=progress, resume=resume)
        return result.model, records

    def interrupt_at_step_10(stage, step, total, loss):
        if step == 10:
            raise KeyboardInterrupt

    whole, records = tuned(tmp_path / "a")
    assert records[-1]["steps"] == 12
    with pytest.raises(KeyboardInterrupt):
        tuned(tmp_path / "b", interrupt_at_step_10)
    assert (tmp_path / "b" / trainer_module.RUN_FILE).is_file()
    steps: list = []
    resumed, records = tuned(tmp_path / "b", lambda s, step, *a: steps.append(step), True)
    assert steps == [9, 10, 11, 12]  # the passes before the interruption are not run again
    assert records[-1]["steps"] == 12 and records[-1]["kept"]
    assert not (tmp_path / "b" / trainer_module.RUN_FILE).exists()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_start_from_continues_a_tuned_student_with_the_fine_tune_only(tmp_path):
    from deeprebirth.errors import DeepRebirthError
    from deeprebirth.slimming import save, start_from

    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    config = TuneConfig(max_batches=2, finetune_batches=2, finetune_lr=1e-3)
    tune(result, teacher, loader, config, tmp_path / "first")
    save(result, tmp_path / "tuned")
    fresh = slim(teacher, name="user_models:tiny_cnn", input_size=16)
    start_from(fresh, tmp_path / "tuned")
    tuned, started = result.model.state_dict(), fresh.model.state_dict()
    for (name, a), b in zip(tuned.items(), started.values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    ran: list = []
    progress = lambda stage, *a: ran.append(stage)  # noqa: E731
    records = tune(fresh, teacher, loader, config, tmp_path / "more", progress=progress, tuned=True)
    assert [r["stage"] for r in records] == ["finetune"] and set(ran) == {"finetune"}
    exact = slim(teacher, name="user_models:tiny_cnn", input_size=16, exact_only=True)
    with pytest.raises(DeepRebirthError, match="slimmed with another plan"):
        start_from(exact, tmp_path / "tuned")
    with pytest.raises(DeepRebirthError, match="not a slimmed model directory"):
        start_from(fresh, tmp_path / "first")


def test_a_resumed_run_from_another_network_is_refused(tmp_path):
    from deeprebirth.errors import DeepRebirthError

    teacher, result, loader = tiny_setup()
    config = TuneConfig(max_batches=0, finetune_batches=100, finetune_epochs=2)

    def interrupt_in_the_second_pass(stage, step, total, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(result, teacher, loader, config, tmp_path, progress=interrupt_in_the_second_pass)
    other = get_model("bvlc_googlenet", num_classes=10, in_chans=1)
    slimmed = slim(other, input_size=32, in_chans=1)
    with pytest.raises(DeepRebirthError, match="tune.resume=false"):
        tune(slimmed, other, loader, config, tmp_path, resume=True)


def test_nan_loss_rolls_back_and_retries(tmp_path, monkeypatch):
    teacher, result, loader = tiny_setup()
    real = trainer_module._normalized_mse
    calls = {"n": 0}

    def nan_once(s, t):
        calls["n"] += 1
        loss = real(s, t)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(trainer_module, "_normalized_mse", nan_once)
    records = tune(result, teacher, loader, TuneConfig(max_batches=3, finetune_batches=0), tmp_path)
    assert records[0]["retries"] == 1 and records[0]["lr"] == pytest.approx(1e-4)
    log = [json.loads(line) for line in (tmp_path / "tune_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "rollback" and "nan" in log[0]["why"]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_divergence_is_reported(tmp_path, monkeypatch):
    teacher, result, loader = tiny_setup()
    monkeypatch.setattr(trainer_module, "_normalized_mse", lambda s, t: s[0].sum() * float("inf"))
    with pytest.raises(trainer_module.Diverged, match="diverged"):
        tune(
            result,
            teacher,
            loader,
            TuneConfig(max_batches=2, finetune_batches=0, max_retries=1),
            tmp_path,
        )


class FixedLogits(nn.Module):
    """Logits that rank class (i + k) % 3 k-th for the i-th image of each batch."""

    def forward(self, x):
        n = x.shape[0]
        idx = torch.arange(n)
        logits = torch.zeros(n, 3)
        logits[idx, idx % 3] = 2.0
        logits[idx, (idx + 1) % 3] = 1.0
        return logits


def test_evaluate_matches_a_hand_count():
    x = torch.zeros(6, 1, 2, 2)
    y = torch.tensor([0, 2, 2, 0, 1, 1])  # predicted top-1: 0 1 2 0 1 2 -> 4 hits
    r = evaluate(FixedLogits(), [(x, y)])
    assert r == {"top1": 4 / 6, "top5": 1.0, "n": 6}


def test_evaluate_refuses_data_with_more_classes():
    with pytest.raises(Exception, match="3 outputs but the data has class 5"):
        evaluate(FixedLogits(), [(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]))])


def test_torchrun_two_processes(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from deeprebirth.evaluation import save_weights

    weights = save_weights(
        get_model("user_models:tiny_cnn", num_classes=10),
        tmp_path / "t.safetensors",
        {"model": "user_models:tiny_cnn", "num_classes": 10, "in_chans": 3, "input_size": 16},
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "deeprebirth", "slim", "user_models:tiny_cnn", "--checkpoint", str(weights),
        "--data", "synthetic", "--max-batches", "2", "--finetune-batches", "2", "--device", "cpu",
        "--out", str(tmp_path / "s"), "--plan-runtime", "ort",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (run.stdout + run.stderr).count("merges applied") == 1  # rank 0 alone reports, writes
    # the plan is timed once, by rank 0, and both ranks tune the one it made
    assert (run.stdout + run.stderr).count("exact merges that can cost time") == 1
    report = json.loads((tmp_path / "s" / "tune_report.json").read_text())
    assert report["tuning"]["stages"][-1]["stage"] == "finetune"


def test_finetune_passes_are_capped_by_finetune_epochs(tmp_path):
    teacher, result, loader = tiny_setup()  # 64 images in batches of 16: 4 per pass
    config = TuneConfig(max_batches=1, finetune_batches=100, finetune_epochs=2)
    records = tune(result, teacher, loader, config, tmp_path)
    assert records[-1]["stage"] == "finetune" and records[-1]["steps"] == 2 * len(loader)


def test_the_learning_rate_anneals_by_the_end_of_the_passes(tmp_path, monkeypatch):
    teacher, result, loader = tiny_setup()
    seen = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    config = TuneConfig(max_batches=10_000, epochs_per_stage=2, finetune_batches=0)
    tune(result, teacher, loader, config, tmp_path)
    first_stage = seen[: 2 * len(loader)]  # the passes end the run long before 10,000 batches
    assert first_stage[0] == pytest.approx(config.lr)
    assert first_stage[-1] < 0.1 * config.lr


def test_tune_runs_on_the_device_asked_for(tmp_path, monkeypatch):
    seen = {}
    real = trainer_module.Tuner.__init__

    def spy(self, *a, **kw):
        seen.update(kw)
        real(self, *a, **kw)

    monkeypatch.setattr(trainer_module.Tuner, "__init__", spy)
    teacher, result, loader = tiny_setup()
    tune(
        result,
        teacher,
        loader,
        TuneConfig(max_batches=1, finetune_batches=0),
        tmp_path,
        device=torch.device("cpu"),
    )
    assert seen["device"] == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    from deeprebirth.errors import DeepRebirthError
    from deeprebirth.tuning.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeepRebirthError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(DeepRebirthError, match="unknown device"):
        pick_device("gpu0")
    assert pick_device("auto") == torch.device("cpu")


def test_stages_are_judged_on_the_probe_batches_in_inference_mode(tmp_path):
    """The keep/rollback probe reads the held-out batches given (the validation split), with
    dropout off, and leaves the layers' train/eval modes as they were."""
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    val = get_dataset("synthetic", "val", input_size=16, in_chans=3, synthetic_size=32)
    probe = list(get_loader(val, batch_size=16))
    config = TuneConfig(max_batches=2, finetune_batches=0)
    result.model.train()
    records = tune(result, teacher, loader, config, tmp_path, probe=probe)
    stages = stages_of(teacher, result, (1, 3, 16, 16))
    # Recompute the last stage's probe loss on the given batches: it is what was recorded.
    last, stage = records[-1], stages[-1]
    student, target = (
        truncate(result.model, stage.boundary),
        truncate(capture(teacher), stage.boundary),
    )
    with torch.no_grad():
        losses = [trainer_module._normalized_mse(student(x), target(x)).item() for x, _ in probe]
    expected = last["probe_after"] if last["kept"] else last["probe_before"]
    assert expected == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_from_scratch_reinitialises_only_the_merged_layers(tmp_path, monkeypatch):
    from deeprebirth import slimming

    teacher, result, loader = tiny_setup()
    stages = stages_of(teacher, result, (1, 3, 16, 16))
    merged = {t for s in stages for t in s.trainable}
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    seen = []
    real = slimming.reinitialise
    monkeypatch.setattr(
        slimming, "reinitialise", lambda m, names: (seen.extend(names), real(m, names))
    )
    # No training steps at all: what changes is the re-initialisation alone.
    config = TuneConfig(max_batches=0, finetune_batches=0, reinit=True)
    tune(result, teacher, loader, config, tmp_path)
    assert set(seen) == merged
    after = result.model.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= merged


def test_merged_layers_get_their_own_learning_rate_in_the_fine_tune(tmp_path, monkeypatch):
    teacher, result, loader = tiny_setup()
    stages = stages_of(teacher, result, (1, 3, 16, 16))
    merged = {
        id(p)
        for s in stages
        for name in s.trainable
        for p in result.model.get_submodule(name).parameters()
    }
    seen = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append([({id(p) for p in g["params"]}, g["lr"]) for g in self.param_groups])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    config = TuneConfig(max_batches=0, finetune_batches=2, finetune_lr=1e-3, merged_lr_scale=10)
    tune(result, teacher, loader, config, tmp_path)
    (slow, slow_lr), (fast, fast_lr) = seen[0]
    assert merged and fast == merged and not slow & merged
    assert fast_lr == pytest.approx(10 * slow_lr) and slow_lr == pytest.approx(1e-3)


def test_tucker_factors_keep_the_base_learning_rate_in_the_fine_tune(tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    result = slim(teacher, input_size=16, tucker=True, rank_ratio=0.5)
    assert {"streamline:0", "tucker:3"} <= set(result.report.applied)
    _, _, loader = tiny_setup()
    factors = {id(p) for p in result.model.get_submodule("3").parameters()}
    streamlined = {id(p) for p in result.model.get_submodule("0").parameters()}
    seen = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append([{id(p) for p in g["params"]} for g in self.param_groups])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    tune(result, teacher, loader, TuneConfig(max_batches=0, finetune_batches=1), tmp_path)
    slow, fast = seen[0]
    assert factors and factors <= slow  # Tucker-2's factors of conv 3: the base rate
    assert streamlined and streamlined <= fast  # the streamlined conv: merged_lr_scale


def test_feature_distillation_joins_the_fine_tune_at_the_stage_boundaries(tmp_path):
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    stages = stages_of(teacher, result, (1, 3, 16, 16))
    inside = {b for s in stages for b in s.boundary if b != "<output>"}
    assert inside, "tiny_cnn should have a stage judged inside the network"
    x = next(iter(loader))[0]
    before = sum(
        boundary_error(teacher, result, s, x) for s in stages if s.boundary != ["<output>"]
    )
    config = TuneConfig(max_batches=0, finetune_batches=40, finetune_epochs=10, feature_weight=1)
    record = tune(result, teacher, loader, config, tmp_path)[-1]
    after = sum(boundary_error(teacher, result, s, x) for s in stages if s.boundary != ["<output>"])
    assert record["stage"] == "finetune" and record["features"] == len(inside)
    assert after < before


def test_a_budget_that_ends_runs_early_is_reported(tmp_path):
    from deeprebirth.tuning.trainer import cut_short, tuning_cost

    teacher, result, loader = tiny_setup()
    long = TuneConfig(max_batches=10_000, epochs_per_stage=50, finetune_epochs=50)
    records = tune(result, teacher, loader, long, tmp_path / "a")
    assert cut_short(records) == {}  # every run did its planned batches
    cost = tuning_cost(records, 16, 64)
    assert cost["batches"] == sum(r["steps"] for r in records)
    assert cost["passes"] == pytest.approx(cost["batches"] / 4, abs=1e-3)
    teacher, result, loader = tiny_setup()
    rushed = TuneConfig(max_batches=10_000, epochs_per_stage=50, budget_minutes=1e-4)
    short = cut_short(tune(result, teacher, loader, rushed, tmp_path / "b"))
    assert short and all(0 < done < 1 for done in short.values())


def test_the_fine_tune_chooses_its_learning_rate_on_held_out_data(tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    starts, original = {}, trainer_module.Tuner._train

    def recording(self, name, *args, **kwargs):
        starts[name] = {k: v.clone() for k, v in self.student.state_dict().items()}
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Tuner, "_train", recording)
    config = TuneConfig(
        max_batches=0, finetune_batches=3, finetune_lr_choices=[1e-2, 1e-4], lr_choice_batches=2
    )
    held_out = [next(iter(loader))]
    records = tune(result, teacher, loader, config, tmp_path, probe=held_out, choice=held_out)
    runs = [r for r in records if r["stage"].startswith("finetune_lr_")]
    assert [r["stage"] for r in runs] == ["finetune_lr_0.01", "finetune_lr_0.0001"]
    assert all(r["steps"] == 2 for r in runs)
    # every short run starts from the same weights, and so does the fine-tune after them
    first = starts["finetune_lr_0.01"]
    for name in ("finetune_lr_0.0001", "finetune"):
        assert all(torch.equal(first[k], v) for k, v in starts[name].items())
    best = min(runs, key=lambda r: r["val_loss"])
    assert records[-1]["stage"] == "finetune" and records[-1]["lr"] == best["lr"]
    assert records[-1]["lr_choice"] == {"0.01": runs[0]["val_loss"], "0.0001": runs[1]["val_loss"]}
    state = json.loads((tmp_path / trainer_module.STATE_FILE).read_text())
    assert state["finetune_lr"] == best["lr"]


def test_a_short_run_that_did_worse_is_judged_where_it_got_to(tmp_path):
    """A choice's short run that leaves the probe worse is not rolled back before it is
    judged: else it would score as its start, and tie with (and beat) better ones."""
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    config = TuneConfig(
        max_batches=0,
        finetune_batches=1,
        finetune_lr_choices=[1.0, 1e-12],  # wild, and as good as not training
        lr_choice_batches=3,
        explode_factor=1e12,
    )
    held_out = [next(iter(loader))]
    records = tune(result, teacher, loader, config, tmp_path, probe=held_out, choice=held_out)
    wild, still = records[0], records[1]
    assert wild["stage"] == "finetune_lr_1" and not wild["kept"]
    assert wild["val_loss"] > still["val_loss"] * 1.01
    assert records[-1]["lr"] == 1e-12


def test_a_set_learning_rate_or_a_resumed_choice_is_not_chosen_again(tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher, result, loader = tiny_setup()
    config = TuneConfig(max_batches=0, finetune_batches=2, lr_choice_batches=1)
    original = trainer_module.Tuner._train

    def interrupted(self, name, *args, **kwargs):
        if name == "finetune":
            raise KeyboardInterrupt
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Tuner, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(result, teacher, loader, config, tmp_path)
    chosen = json.loads((tmp_path / trainer_module.STATE_FILE).read_text())["finetune_lr"]
    monkeypatch.setattr(trainer_module.Tuner, "_train", original)
    records = tune(result, teacher, loader, config, tmp_path, resume=True)
    assert [r["stage"] for r in records] == ["finetune"] and records[0]["lr"] == chosen
    fixed = TuneConfig(max_batches=0, finetune_batches=2, finetune_lr=5e-4)
    records = tune(result, teacher, loader, fixed, tmp_path / "fixed")
    assert [(r["stage"], r["lr"]) for r in records] == [("finetune", 5e-4)]


def test_learning_rate_choices_must_be_positive():
    with pytest.raises(ConfigError, match="finetune_lr_choices"):
        TuneConfig(finetune_lr_choices=[]).check()
    with pytest.raises(ConfigError, match="finetune_lr_choices"):
        TuneConfig(finetune_lr_choices=[1e-3, 0.0]).check()
