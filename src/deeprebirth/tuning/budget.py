"""What share of the tuning a plan needs ``tune.budget_minutes`` buys on this machine.

The tuning a config plans (its layer-wise stages, the linearization when the plan drops
activations, the fine-tune's learning-rate choice and its passes) is counted in training
batches, and a batch is timed here: one whole-network distillation step (the teacher's
forward, the student's forward and backward; a stage trains a truncated network, so this
errs on the side of needing more). :mod:`deeprebirth.planning.recoverable` keeps as many
learned merges as the share allows.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from .trainer import TuneConfig, planned_steps


def tuning_batches(config: TuneConfig, stages: int, per_pass: int, linearizes: bool) -> int:
    """Training batches ``config`` plans for ``stages`` layer-wise stages (a pass over the
    data being ``per_pass`` batches); ``linearizes``: the plan drops activations."""
    total = 0
    if config.max_batches and stages:
        per_stage = planned_steps(config.max_batches, config.epochs_per_stage, per_pass)
        total += per_stage * (stages if not config.all_at_once else 1)
    if linearizes and config.linearizes():
        total += planned_steps(config.linearize_batches, config.linearize_epochs, per_pass)
    if config.finetunes():
        total += planned_steps(config.finetune_batches, config.finetune_epochs, per_pass)
        if config.finetune_lr is None:
            total += len(config.finetune_lr_choices) * config.lr_choice_batches
    return total


def step_seconds(
    model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu", repeats: int = 3
) -> float:
    """Seconds of one whole-network distillation step on ``images`` (median of ``repeats``
    after a warm-up), the model standing in for its student; its weights are not changed."""
    teacher = copy.deepcopy(model).to(device).eval()
    student = copy.deepcopy(model).to(device).train()
    images = images.to(device)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            target = teacher(images)
        loss = F.mse_loss(student(images), target)
        loss.backward()
        student.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def budget_share(
    config: TuneConfig, stages: int, per_pass: int, seconds_per_batch: float, linearizes: bool
) -> tuple[float, float]:
    """(the share of the planned tuning that ``config.budget_minutes`` buys, the minutes
    the planned tuning needs at ``seconds_per_batch``)."""
    need = tuning_batches(config, stages, per_pass, linearizes) * seconds_per_batch / 60
    if not config.budget_minutes or need <= 0:
        return 1.0, need
    return config.budget_minutes / need, need
