"""Layer-wise fine-tuning against the original network, then a short distillation.

When the plan drops activations (depth compression), a gradual linearization comes first
(``linearizes``): the activations that ``drop_activation`` entries remove fade out while the
unmerged network is distilled, the chains are merged after (``deeprebirth.tuning.linearize``)
and need no stage of their own.

Stage by stage (input side first), the layers a learned merge created are trained so that
the slimmed network (the *student*, fed by its own already-tuned earlier layers) reproduces
the original (the *teacher*, frozen) at the merge's block boundary. Then the whole student
is fine-tuned against the teacher: its soft logits, the labels' cross-entropy
(``use_labels``), and the features at the stages' block boundaries (``feature_weight``),
the merged layers at ``merged_lr_scale`` times the learning rate. That default won an
ablation on the validation split (``benchmarks/tune_ablation.py``). Stages need images only,
no labels.

A checkpoint is written after every stage, and after every pass over the data within a
run longer than one pass (weights, optimizer, schedule); ``resume=True`` continues from the
last one.
A non-finite or exploding loss rolls the stage back and retries it at a smaller learning
rate (a bounded number of times).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import fx, nn

from ..config import ConfigError, option
from ..errors import DeepRebirthError
from ..files import write_json
from .linearize import Fade, set_fade
from .stages import Stage, trainable_parameters, truncate

STATE_FILE, WEIGHTS_FILE, LOG_FILE = "state.json", "student.safetensors", "tune_log.jsonl"
#: The run in progress at its last pass boundary: what it trains, the optimizer's state, the
#: weights it started from (for a rollback) and its schedule. Read with weights_only=True.
RUN_FILE = "run.pt"


@dataclass
class TuneConfig:
    max_batches: int = option(200, "batches per stage, at most (0: no stages)")
    epochs_per_stage: int = option(1, "passes over the data per stage, at most")
    lr: float = option(1e-3, "stage learning rate (Adam, cosine decay)")
    linearize_batches: int | None = option(
        None,
        "before the stages, when the plan drops activations: batches of whole-network "
        "distillation in which those activations fade out, the chains merged after and "
        "their stages skipped (none: linearize_epochs whole passes; 0: dropped at once, "
        "a stage per chain)",
    )
    linearize_epochs: int = option(3, "passes over the data in the linearization, at most")
    linearize_lr: float = option(5e-4, "linearization learning rate")
    linearize_ramp: float = option(
        0.5, "share of the linearization over which the activations fade (then held gone)"
    )
    finetune_batches: int | None = option(
        None,
        "whole-network distillation batches after the stages, at most (none: finetune_epochs "
        "whole passes; 0: no fine-tune)",
    )
    finetune_epochs: int = option(
        2, "the fine-tune's budget: passes over the training data (at most finetune_batches)"
    )
    finetune_lr: float | None = option(
        None,
        "fine-tune learning rate (none: chosen among finetune_lr_choices on the validation "
        "data, by a short run of each from the same weights; networks differ: 1e-3 won on "
        "GoogLeNet, benchmarks/results/tune_ablation.md, and lost on MobileNetV2)",
    )
    finetune_lr_choices: list[float] = option(
        [1e-3, 3e-4, 1e-4], "the learning rates the fine-tune chooses among (finetune_lr unset)"
    )
    lr_choice_batches: int = option(
        300,
        "training batches of each choice's short run (its own cosine decay), judged by the "
        "distillation loss on lr_choice_val_batches validation batches; counted in the cost",
    )
    lr_choice_val_batches: int = option(
        16, "validation batches the learning rate choice is judged on"
    )
    temperature: float = option(4.0, "distillation temperature of the fine-tune")
    feature_weight: float = option(
        1.0,
        "weight, in the fine-tune, of feature distillation at the stages' block boundaries "
        "(their mean normalised error beside the logits'; 0: logits only)",
    )
    merged_lr_scale: float = option(
        3.0,
        "the merged layers' learning rate in the fine-tune, as a multiple of finetune_lr "
        "(the layers around them, and Tucker-2's factors, keep finetune_lr)",
    )
    use_labels: bool = option(
        True, "cross-entropy on the labels beside distillation in the fine-tune (stages never)"
    )
    all_at_once: bool = option(
        False, "train every merged layer in one stage, judged at the output (for comparison)"
    )
    reinit: bool = option(
        False,
        "re-initialise the merged layers instead of starting from the weights the merge "
        "copied: train them from scratch, the paper's other arm",
    )
    budget_minutes: float | None = option(
        None,
        "wall-clock budget for all tuning (none: no limit); one below what the plan needs "
        "keeps the learned merges it can recover (fit_budget)",
    )
    finetune_share: float = option(
        0.3, "share of budget_minutes kept for the fine-tune (the stages split the rest)"
    )
    probe_batches: int = option(
        4, "validation batches a stage must leave no worse (else it is rolled back)"
    )
    max_retries: int = option(3, "retries of a diverged stage, each at a smaller learning rate")
    explode_factor: float = option(
        1e3, "a loss this many times the stage's first loss counts as diverged"
    )

    def finetunes(self) -> bool:
        """Whether a fine-tune follows the stages."""
        return self.finetune_batches is None or self.finetune_batches > 0

    def linearizes(self) -> bool:
        """Whether a plan's dropped activations fade out in a linearization (not with
        ``reinit``: it starts from the original weights)."""
        if self.linearize_batches is None:
            return not self.reinit
        return self.linearize_batches > 0

    def check(self) -> None:
        """Values in range, or a ConfigError naming the key."""
        for key in (
            "epochs_per_stage",
            "finetune_epochs",
            "linearize_epochs",
            "probe_batches",
            "lr_choice_batches",
            "lr_choice_val_batches",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"tune.{key} must be at least 1, not {getattr(self, key)}")
        for key in ("max_batches", "finetune_batches", "linearize_batches", "max_retries"):
            if (getattr(self, key) or 0) < 0:
                raise ConfigError(f"tune.{key} must be at least 0, not {getattr(self, key)}")
        if not 0.0 < self.linearize_ramp <= 1.0:
            raise ConfigError(f"tune.linearize_ramp must be in (0, 1], not {self.linearize_ramp}")
        if self.linearize_batches and self.reinit:
            raise ConfigError(
                "tune.linearize_batches and tune.reinit exclude each other: linearization "
                "starts from the original weights"
            )
        if not 0.0 <= self.finetune_share < 1.0:
            raise ConfigError(f"tune.finetune_share must be in [0, 1), not {self.finetune_share}")
        if self.feature_weight < 0:
            raise ConfigError(f"tune.feature_weight must be at least 0, not {self.feature_weight}")
        for key in ("lr", "finetune_lr", "linearize_lr", "temperature", "merged_lr_scale"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"tune.{key} must be positive, not {getattr(self, key)}")
        if not self.finetune_lr_choices or min(self.finetune_lr_choices) <= 0:
            raise ConfigError(
                "tune.finetune_lr_choices must be positive learning rates, not "
                f"{self.finetune_lr_choices}"
            )
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ConfigError(f"tune.budget_minutes must be positive, not {self.budget_minutes}")


class Diverged(DeepRebirthError):
    pass


def _normalized_mse(student: tuple, teacher: tuple) -> torch.Tensor:
    # Each boundary counts equally, whatever the scale of its features.
    return sum(
        F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-8)
        for s, t in zip(student, teacher, strict=True)
    )


def _batches(loader: Iterable, n: int | None, epochs: int):
    """Up to ``n`` batches (None: no cap), cycling the loader for at most ``epochs`` passes."""
    return itertools.islice(itertools.chain.from_iterable(loader for _ in range(epochs)), n)


def _groups(params: list[nn.Parameter], fast: set | None, scale: float) -> list[dict]:
    """Adam's parameter groups: ``fast`` ones at ``scale`` times the learning rate."""
    fast = fast or set()
    slow = [p for p in params if p not in fast]
    quick = [p for p in params if p in fast]
    groups = [{"params": slow, "scale": 1.0}]
    if quick:
        groups.append({"params": quick, "scale": scale})
    return groups


def _snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[nn.Parameter], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)


def planned_steps(batches: int | None, epochs: int, per_pass: int) -> int:
    """Steps of a run capped at ``batches`` (None: no cap) and ``epochs`` passes of
    ``per_pass`` batches."""
    return epochs * per_pass if batches is None else min(batches, epochs * per_pass)


class Tuner:
    """Runs the stages and the final fine-tune, checkpointing into ``work_dir``."""

    def __init__(
        self,
        teacher: fx.GraphModule,
        student: fx.GraphModule,
        stages: list[Stage],
        loader: Iterable,
        config: TuneConfig,
        work_dir: str | Path,
        *,
        progress: Callable[[str, int, int, float], None] | None = None,
        is_main: bool = True,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        device: torch.device | str = "cpu",
        probe: Iterable | None = None,
        choice: Iterable | None = None,
    ):
        self.device = torch.device(device)
        #: Held-out batches (the validation split) a run must not make worse; without
        #: them, the first training batch.
        self.probe = [[t.to(self.device) for t in b[:2]] for b in probe] if probe else None
        #: Held-out batches the fine-tune's learning rate is chosen on (default: the probe).
        self.choice = [[t.to(self.device) for t in b[:2]] for b in choice] if choice else None
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student.to(self.device)
        self.stages = stages
        self.loader = loader
        self.config = config
        self.work_dir = Path(work_dir)
        self.progress = progress or (lambda *a: None)
        self.is_main = is_main
        self.wrap = wrap or (lambda m: m)
        self.deadline = time.time() + 60 * config.budget_minutes if config.budget_minutes else None
        self.state = {"completed": [], "finetuned": False, "linearized": False}
        self._resuming = False

    # --- checkpoints -------------------------------------------------------------------

    def resume(self) -> list[str]:
        """Load the last checkpoint; returns the stages already done. A run that was
        interrupted part-way continues from its last pass boundary."""
        self._resuming = True
        state_file = self.work_dir / STATE_FILE
        if not state_file.is_file():
            return []
        self.state = {"linearized": False} | json.loads(state_file.read_text())
        weights = load_file(self.work_dir / WEIGHTS_FILE, device=str(self.device))
        try:
            self.student.load_state_dict(weights)
        except RuntimeError:  # missing, unexpected or mis-shaped weights
            raise DeepRebirthError(
                f"{self.work_dir} holds another network's tuning; set tune.resume=false to "
                "start again"
            ) from None
        return list(self.state["completed"])

    def _checkpoint(self) -> None:
        if not self.is_main:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.work_dir / f".{WEIGHTS_FILE}.tmp"
        state = {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()}
        save_file(state, tmp)
        tmp.replace(self.work_dir / WEIGHTS_FILE)
        write_json(self.work_dir / STATE_FILE, self.state)  # written last: the commit point

    def _save_run(self, name: str, params, opt, start_state, meta: dict) -> None:
        """The run ``name`` at a pass boundary (``RUN_FILE``), to continue from there."""
        if not self.is_main:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.work_dir / f".{RUN_FILE}.tmp"
        run = {
            "name": name,
            "meta": meta,
            "params": [p.detach().cpu() for p in params],
            "start": [t.cpu() for t in start_state],
            "optimizer": opt.state_dict(),
        }
        torch.save(run, tmp)
        tmp.replace(self.work_dir / RUN_FILE)

    def _resumed_run(self, name: str, params: list[nn.Parameter]) -> dict | None:
        """The run ``name`` as an interrupted tuning left it, when this one resumes."""
        path = self.work_dir / RUN_FILE
        if not (self._resuming and path.is_file()):
            return None
        run = torch.load(path, map_location=self.device, weights_only=True)
        if run["name"] != name:
            return None
        shapes = [tuple(t.shape) for t in run["params"]]
        if shapes != [tuple(p.shape) for p in params]:
            raise DeepRebirthError(
                f"{path} holds another network's {name}; set tune.resume=false to start again"
            )
        return run

    def _drop_run(self) -> None:
        if self.is_main:
            (self.work_dir / RUN_FILE).unlink(missing_ok=True)

    def _log(self, record: dict) -> None:
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            with open(self.work_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _budget_share(self, stages_left: int) -> float | None:
        """Seconds for the next stage (``stages_left`` > 0) or for the fine-tune (0)."""
        if self.deadline is None:
            return None
        left = max(0.0, self.deadline - time.time())
        if stages_left == 0:
            return left
        reserved = (
            self.config.finetune_share * 60 * self.config.budget_minutes
            if self.config.finetunes()
            else 0.0
        )
        return max(0.0, left - reserved) / stages_left

    # --- the work ----------------------------------------------------------------------

    def _todo(self) -> list[Stage]:
        """The layer-wise stages still to run (none with ``max_batches = 0``)."""
        done = set(self.state["completed"])
        return [s for s in self.stages if s.id not in done] if self.config.max_batches else []

    def linearize_seconds(self) -> float | None:
        """The linearization's share of ``budget_minutes``: one share beside the stages
        still to run, the fine-tune's kept aside."""
        return self._budget_share(len(self._todo()) + 1)

    def run(self) -> list[dict]:
        records = []
        todo = self._todo()
        for i, stage in enumerate(todo):
            records.append(self._run_stage(stage, self._budget_share(len(todo) - i)))
            self.state["completed"].append(stage.id)
            self._checkpoint()
        if self.config.finetunes() and not self.state["finetuned"]:
            records += self._finetune()
            self.state["finetuned"] = True
            self._checkpoint()
        return records

    def _probe_batches(self) -> list:
        return self.probe or [[t.to(self.device) for t in next(iter(self.loader))[:2]]]

    def _pass_length(self) -> int | None:
        """Batches in one pass over the data (None: a loader without a length)."""
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _planned(self, batches: int | None, epochs: int) -> int:
        """Steps of a run capped at ``batches`` (None: no cap) and ``epochs`` passes."""
        per_pass = self._pass_length()
        if per_pass is None:
            if batches is None:
                raise ConfigError(
                    "this data has no length to count passes by: set tune.finetune_batches"
                )
            return batches
        return planned_steps(batches, epochs, per_pass)

    def _probe_loss(self, loss_fn, probe: list, module: nn.Module | None = None) -> float:
        """The mean loss on the probe batches, in inference mode (no dropout)."""
        module = module if module is not None else self.student
        modes = {m: m.training for m in module.modules()}
        module.eval()
        try:
            with torch.no_grad():
                return sum(loss_fn(batch).item() for batch in probe) / len(probe)
        finally:
            for m, training in modes.items():
                m.training = training

    def _train(
        self,
        name,
        params,
        loss_fn,
        batches,
        epochs,
        lr,
        seconds,
        module=None,
        start=None,
        fast: set[nn.Parameter] | None = None,
        rollback: bool = True,
    ) -> dict:
        """One optimisation run with rollback and retry on a non-finite or exploding loss.

        The learning rate decays on a cosine over the run (by steps, capped by ``batches``
        and ``epochs`` passes, or by the time share, whichever is further along). A run that
        leaves the loss on a fixed held-out batch higher than it found it is undone: a stage
        never makes the student worse on the probe (the validation batches, when given).
        ``module``: what is trained (default: the student); ``start``: called before each
        attempt with the steps already done and the seconds they took (not zero when a
        resumed run continues from a pass boundary); ``fast``: parameters trained at
        ``merged_lr_scale`` times the learning rate; ``rollback=False``: a run that leaves the
        probe worse is kept all the same (``kept`` says so; the caller puts weights back).

        A run longer than one pass saves itself at every pass boundary; a resumed tuning
        continues it from the last one, with the same optimizer state and schedule.
        """
        probe = self._probe_batches()
        planned = self._planned(batches, epochs)  # whichever cap comes first, or time
        per_pass = self._pass_length()
        run = self._resumed_run(name, params)
        if run is None:
            start_state, first_attempt = _snapshot(params), 0
            probe_before = self._probe_loss(loss_fn, probe, module)
        else:
            _restore(params, run["params"])
            start_state, meta = run["start"], run["meta"]
            first_attempt, lr, probe_before = meta["attempt"], meta["lr"], meta["probe_before"]
        for attempt in range(first_attempt, self.config.max_retries + 1):
            opt = torch.optim.Adam(_groups(params, fast, self.config.merged_lr_scale), lr=lr)
            saved = {}
            if run is not None:  # continue the interrupted run where it saved itself
                opt.load_state_dict(run["optimizer"])
                saved, run = run["meta"], None
            t0 = time.time() - saved.get("elapsed", 0.0)
            first, losses, steps = (
                saved.get("first"),
                saved.get("losses", []),
                saved.get("steps", 0),
            )
            if start is not None:
                start(steps, time.time() - t0)
            passes_done = steps // per_pass if per_pass else 0
            try:
                left = None if batches is None else batches - steps
                for batch in _batches(self.loader, left, epochs - passes_done):
                    done = steps / planned
                    if seconds:
                        done = max(done, (time.time() - t0) / seconds)
                    for group in opt.param_groups:
                        decay = 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
                        group["lr"] = lr * group["scale"] * decay
                    loss = loss_fn([t.to(self.device) for t in batch[:2]])
                    value = loss.item()
                    first = value if first is None else first
                    if not math.isfinite(value) or value > self.config.explode_factor * max(
                        first, 1e-8
                    ):
                        raise Diverged(f"{name}: loss {value:.3g} (first {first:.3g})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(value)
                    steps += 1
                    self.progress(name, steps, planned, value)
                    if seconds is not None and time.time() - t0 > seconds:
                        break
                    if per_pass and steps % per_pass == 0 and steps < planned:
                        meta = {
                            "attempt": attempt,
                            "lr": lr,
                            "steps": steps,
                            "elapsed": time.time() - t0,
                            "first": first,
                            "losses": losses,
                            "probe_before": probe_before,
                        }
                        self._save_run(name, params, opt, start_state, meta)
            except Diverged as e:
                self._drop_run()
                _restore(params, start_state)
                self._log(
                    {
                        "stage": name,
                        "event": "rollback",
                        "attempt": attempt,
                        "lr": lr,
                        "why": str(e),
                    }
                )
                lr *= 0.1
                continue
            self._drop_run()
            tail = losses[-max(1, len(losses) // 10) :] or [float("nan")]
            probe_after = self._probe_loss(loss_fn, probe, module)
            kept = probe_after <= probe_before
            if not kept and rollback:
                _restore(params, start_state)
            record = {
                "stage": name,
                "steps": steps,
                "planned": planned,
                "lr": lr,
                "retries": attempt,
                "loss_first": first,
                "loss_last": sum(tail) / len(tail),
                "probe_before": probe_before,
                "probe_after": probe_after,
                "kept": kept,
                "seconds": round(time.time() - t0, 2),
            }
            self._log(record)
            return record
        raise Diverged(f"stage {name} diverged {self.config.max_retries + 1} times; lower --lr")

    def _run_stage(self, stage: Stage, seconds: float | None) -> dict:
        student = truncate(self.student, stage.boundary)
        teacher = truncate(self.teacher, stage.boundary)
        for p in self.student.parameters():
            p.requires_grad_(False)
        params = trainable_parameters(self.student, stage.trainable)
        for p in params:
            p.requires_grad_(True)
        model = self.wrap(student.train())

        def loss_fn(batch):
            x = batch[0]
            with torch.no_grad():
                target = teacher(x)
            return _normalized_mse(model(x), target)

        record = self._train(
            stage.id,
            params,
            loss_fn,
            self.config.max_batches,
            self.config.epochs_per_stage,
            self.config.lr,
            seconds,
        )
        record["trainable"], record["boundary"] = stage.trainable, stage.boundary
        self.student.eval()
        return record

    def _distillation(
        self, model: nn.Module, teacher: nn.Module | None = None, features: int = 0
    ) -> Callable:
        """The whole-network loss: the teacher's soft logits (plus the labels' cross-entropy
        with ``use_labels``). With ``features`` > 0, ``model`` and ``teacher`` return that
        many feature maps before the logits, and their mean normalised error, weighted by
        ``feature_weight``, joins the loss."""
        T, c = self.config.temperature, self.config
        teacher = teacher if teacher is not None else self.teacher

        def loss_fn(batch):
            x, y = batch[0], batch[1]
            with torch.no_grad():
                target = teacher(x)
            out = model(x)
            if features:
                (*fs, logits), (*ft, t_logits) = out, target
            else:
                logits, t_logits = out, target
            soft = F.softmax(t_logits / T, dim=1)
            loss = F.kl_div(F.log_softmax(logits / T, dim=1), soft, reduction="batchmean") * T * T
            if c.use_labels:
                loss = loss + F.cross_entropy(logits, y)
            if features:
                loss = loss + c.feature_weight * _normalized_mse(fs, ft) / features
            return loss

        return loss_fn

    def boundaries(self) -> list[str]:
        """The stages' block boundaries inside the network (the output aside)."""
        return sorted({b for st in self.stages for b in st.boundary if b != "<output>"})

    def _finetune(self) -> list[dict]:
        """The whole-network fine-tune, after choosing its learning rate (unless set): the
        choice's short runs' records, then the fine-tune's."""
        params = list(self.student.parameters())
        for p in params:
            p.requires_grad_(True)
        kept = {name for st in self.stages for name in st.approximating}  # Tucker's factors
        merged = {
            p
            for st in self.stages
            for p in trainable_parameters(self.student, [t for t in st.trainable if t not in kept])
        }
        features = self.boundaries() if self.config.feature_weight else []
        student, teacher = self.student, self.teacher
        if features:  # both return the boundaries' feature maps, then the logits
            student = truncate(self.student, [*features, "<output>"])
            teacher = truncate(self.teacher, [*features, "<output>"])
        model = self.wrap(student.train())
        loss_fn = self._distillation(model, teacher, len(features))
        records, lr = [], self.config.finetune_lr or self.state.get("finetune_lr")
        if lr is None:
            lr, records = self._choose_lr(params, loss_fn, student, merged)
            self.state["finetune_lr"] = lr
            self._checkpoint()
        record = self._train(
            "finetune",
            params,
            loss_fn,
            self.config.finetune_batches,
            self.config.finetune_epochs,
            lr,
            self._budget_share(0),
            module=student,
            fast=merged,
        )
        record["features"] = len(features)
        if records:
            record["lr_choice"] = {f"{r['lr']:g}": r["val_loss"] for r in records}
        self.student.eval()
        return [*records, record]

    def _choose_lr(
        self, params: list, loss_fn: Callable, student: nn.Module, merged: set
    ) -> tuple[float, list[dict]]:
        """The fine-tune's learning rate: each of ``finetune_lr_choices`` trains the
        student for ``lr_choice_batches`` (a time budget gives the choice 15% of what is
        left) from the same weights, which are put back after each; the lowest
        distillation loss on the choice's validation batches wins. Returns it and the
        short runs' records."""
        c = self.config
        if len(c.finetune_lr_choices) == 1:
            return c.finetune_lr_choices[0], []
        start = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        judge, held_out = self._distillation(self.student), self.choice or self._probe_batches()
        left = self._budget_share(0)
        seconds = None if left is None else 0.15 * left / len(c.finetune_lr_choices)
        records = []
        for lr in c.finetune_lr_choices:
            record = self._train(
                f"finetune_lr_{lr:g}",
                params,
                loss_fn,
                c.lr_choice_batches,
                1,
                lr,
                seconds,
                module=student,
                fast=merged,
                rollback=False,  # judged where it got to, even if worse than the start
            )
            record["val_loss"] = self._probe_loss(judge, held_out)
            records.append(record)
            self.student.load_state_dict(start)
        chosen = min(records, key=lambda r: r["val_loss"])["lr"]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [chosen]  # every rank trains with rank 0's choice
            torch.distributed.broadcast_object_list(box, src=0)
            chosen = box[0]
        losses = {f"{r['lr']:g}": r["val_loss"] for r in records}
        self._log({"stage": "finetune_lr", "event": "chosen", "lr": chosen, "val_loss": losses})
        return chosen, records

    def linearize(
        self,
        network: nn.Module,
        fades: list[Fade],
        merge: Callable[[nn.Module], None],
        seconds: float | None = None,
    ) -> dict:
        """Gradual linearization (``deeprebirth.tuning.linearize``): distil ``network`` (the
        student before its drop_activation merges, ``fades`` after the activations they
        drop) while the fades go from 0 to 1, then ``merge(network)``, which loads the merged
        weights into the student. Checkpoints; a resumed run that did this skips it."""
        if self.state["linearized"]:
            return {"stage": "linearize", "skipped": "done before the resume"}
        network = network.to(self.device)
        params = list(network.parameters())
        for p in params:
            p.requires_grad_(True)
        model = self.wrap(network.train())
        c = self.config
        planned = max(1, self._planned(c.linearize_batches, c.linearize_epochs))
        distil, step, t0 = self._distillation(model), 0, time.time()

        def restart(steps: int, elapsed: float) -> None:
            nonlocal step, t0
            step, t0 = steps, time.time() - elapsed

        def loss_fn(batch):
            nonlocal step
            if network.training:  # in inference mode (the probe) the fades are 1
                # the share of the run done, by steps or by the time cap (as the learning
                # rate's decay): fully linear after linearize_ramp of it either way
                done = step / planned
                if seconds:
                    done = max(done, (time.time() - t0) / seconds)
                set_fade(fades, done / c.linearize_ramp)
                step += 1
            return distil(batch)

        record = self._train(
            "linearize",
            params,
            loss_fn,
            c.linearize_batches,
            c.linearize_epochs,
            c.linearize_lr,
            seconds,
            module=network,
            start=restart,
        )
        network.eval()
        with torch.no_grad():
            merge(network)
        self.student.to(self.device)
        # the merged student on the probe: what merging changed (a padding conv inside a
        # chain is exact only away from the borders)
        record["probe_merged"] = self._probe_loss(
            self._distillation(self.student), self._probe_batches()
        )
        self._log({"stage": "linearize", "event": "merged", "probe": record["probe_merged"]})
        self.state["linearized"] = True
        self._checkpoint()
        return record


def tuning_cost(records: list[dict], batch_size: int, train_images: int) -> dict:
    """What the tuning ``records`` cost: minutes, batches and passes over the training data
    (a machine-free measure: the batches times ``batch_size`` over ``train_images``)."""
    batches = sum(r.get("steps", 0) for r in records)
    return {
        "minutes": round(sum(r.get("seconds", 0.0) for r in records) / 60, 2),
        "batches": batches,
        "passes": round(batches * batch_size / max(1, train_images), 3),
    }


def cut_short(records: list[dict]) -> dict[str, float]:
    """The runs a time budget ended before their planned batches: name -> share done."""
    return {
        r["stage"]: r["steps"] / r["planned"]
        for r in records
        if r.get("planned") and r["steps"] < r["planned"]
    }


def config_dict(config: TuneConfig) -> dict:
    return asdict(config)
