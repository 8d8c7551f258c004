"""Train a classifier on the real Fashion-MNIST until its validation top-1 stops improving.

Used by ``benchmarks/reproduce.py`` for the teacher (BVLC GoogLeNet) and the reference
networks (SqueezeNet 1.1, MobileNetV2), which all get this one recipe:

* images resized to ``input_size`` (64 by default), one channel (all models take the gray
  image on as many channels as their first conv is built for: ``in_chans``), light
  augmentation (flip, shift of up to 1/8 of the side);
* AdamW (lr 2e-3, weight decay 1e-4), batch 128, a linear warm-up over the first 300 steps;
* after every epoch, top-1 on the validation split (5,000 images held out of the training
  set; the test split is never read here). The learning rate drops tenfold when top-1 has not
  gained ``min_delta`` points for two epochs (``ReduceLROnPlateau``), at most twice; training
  stops when it has not gained ``min_delta`` points for ``patience`` epochs, or after
  ``max_epochs``. The weights of the best epoch are kept.
* ``teacher=``: the references' extra budget, distilled from the teacher (soft logits at
  temperature 4 plus cross-entropy on the labels), for a fixed number of epochs with a
  cosine decay, so a reference gets the same extra training the students get.

Everything needed to continue lives in ``work_dir``: after every epoch its weights and
optimizer state (safetensors, under the epoch's number) and then ``state.json``, which names
them, the best epoch's weights and the rest; files of older epochs are removed only after
that. After a kill, the same call continues from the last finished epoch. Nothing is
unpickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn

from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import evaluate
from deeprebirth.files import write_json

STATE = "state.json"  # names the files below that belong to the last finished epoch


@dataclass
class TrainRecipe:
    input_size: int = 64
    in_chans: int = 1
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    max_epochs: int = 30
    patience: int = 3  # epochs without a gain of min_delta points before stopping
    min_delta: float = 0.1  # points of validation top-1
    plateau_epochs: int = 2  # epochs without a gain before the learning rate drops
    max_lr_drops: int = 2
    # Distillation (the references' extra budget): a fixed number of epochs, no early stop.
    distill_epochs: int = 0
    distill_lr: float = 3e-4
    temperature: float = 4.0
    seed: int = 0
    threads: int = 2


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict:
    """Optimizer tensors to safetensors; returns the non-tensor rest (for JSON)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp)
    tmp.replace(path)
    return {"scalars": scalars, "param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, rest: dict, device) -> None:
    state: dict[int, dict] = {}
    for key, v in load_file(path, device=str(device)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for key, v in rest["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def _save_weights(model: nn.Module, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def _distill_loss(logits, teacher_logits, y, temperature: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, 1),
        F.log_softmax(teacher_logits / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    return soft * t * t + F.cross_entropy(logits, y)


def train_classifier(
    model: nn.Module,
    recipe: TrainRecipe,
    work_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    teacher: nn.Module | None = None,
    data: str = "fashion-mnist",
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model`` in place (ending with its best weights); returns the run's record.

    With ``teacher``, runs ``recipe.distill_epochs`` epochs of distillation instead of the
    early-stopped training. Continues from ``work_dir`` when it holds a finished epoch.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    shape = {"input_size": recipe.input_size, "in_chans": recipe.in_chans}
    train = get_loader(
        get_dataset(data, "train", augment=True, **shape), recipe.batch, shuffle=True
    )
    val = get_loader(get_dataset(data, "val", **shape), 256)
    fmt = torch.channels_last  # ~1.4x faster on a CPU for these convnets
    model.to(device, memory_format=fmt)
    if teacher is not None:
        teacher.to(device, memory_format=fmt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    distilling = teacher is not None
    epochs = recipe.distill_epochs if distilling else recipe.max_epochs
    lr = recipe.distill_lr if distilling else recipe.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    steps = epochs * len(train)
    if distilling:  # fixed budget: cosine decay to the end
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
        plateau = None
    else:  # a linear warm-up (set by hand below, so the plateau drops are not undone)
        sched = None
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="max",
            factor=0.1,
            patience=recipe.plateau_epochs - 1,
            threshold=recipe.min_delta,
            threshold_mode="abs",
            min_lr=lr * 0.1**recipe.max_lr_drops,
        )

    state = {
        "recipe": asdict(recipe),
        "epoch": 0,
        "step": 0,
        "history": [],
        "best": None,
        "done": False,
    }
    if (work / STATE).is_file():
        state = json.loads((work / STATE).read_text())
        if state["recipe"] != asdict(recipe):
            raise ValueError(
                f"{work} holds a run with another recipe; remove it or use another directory"
            )
        model.load_state_dict(load_file(work / state["files"]["last"], device=str(device)))
        _load_optimizer(opt, work / state["files"]["optimizer"], state["optimizer"], device)
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        if plateau is not None:
            plateau.load_state_dict(state["plateau"])
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        log(f"resuming {work} after epoch {state['epoch']}")

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=steps, completed=state["epoch"] * len(train))
        while not state["done"] and state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            start = time.time()
            model.train()
            for x, y in train:
                x = x.to(device, memory_format=fmt)
                y = y.to(device)
                logits = model(x)
                if distilling:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss = _distill_loss(logits, teacher_logits, y, recipe.temperature)
                else:
                    loss = F.cross_entropy(logits, y)
                if sched is None and state["step"] < recipe.warmup_steps:
                    for group in opt.param_groups:
                        group["lr"] = lr * (state["step"] + 1) / recipe.warmup_steps
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state["step"] += 1
                if sched is not None:
                    sched.step()
                what = f"epoch {epoch}/{epochs} loss {loss.item():.3f} lr {opt.param_groups[0]['lr']:.1e}"
                progress.update(task, advance=1, description=what)
                done = progress.tasks[0].completed
                if not progress.console.is_terminal and done % max(1, len(train) // 10) == 0:
                    # No live bar in a log file: a line every tenth of an epoch instead.
                    eta = progress.tasks[0].time_remaining
                    eta_text = "?" if eta is None else f"{eta / 60:.0f} min"
                    log(f"{what}: step {done}/{steps}, eta {eta_text} (at most {epochs} epochs)")
            model.eval()
            with torch.no_grad():
                top1 = 100 * evaluate(model, _on(val, device))["top1"]
            record = {
                "epoch": epoch,
                "val_top1": top1,
                "lr": opt.param_groups[0]["lr"],
                "minutes": (time.time() - start) / 60,
            }
            state["history"].append(record)
            files = dict(state.get("files", {}))
            files["last"] = f"epoch-{epoch}.safetensors"
            files["optimizer"] = f"optimizer-{epoch}.safetensors"
            _save_weights(model, work / files["last"])
            best = state["best"]
            if best is None or top1 > best["val_top1"]:
                files["best"] = files["last"]
                state["best"] = record
            if plateau is not None:
                plateau.step(top1)
                gains = [r["val_top1"] for r in state["history"]]
                window = recipe.patience
                if (
                    len(gains) > window
                    and max(gains[-window:]) < max(gains[:-window]) + recipe.min_delta
                ):
                    state["done"] = True
            log(
                f"epoch {epoch}: val top-1 {top1:.2f}% (best {state['best']['val_top1']:.2f}% "
                f"at epoch {state['best']['epoch']}), {record['minutes']:.1f} min"
            )
            state["epoch"] = epoch
            state["optimizer"] = _save_optimizer(opt, work / files["optimizer"])
            if sched is not None:
                state["scheduler"] = sched.state_dict()
            if plateau is not None:
                state["plateau"] = plateau.state_dict()
            state["rng"] = torch.get_rng_state().tolist()
            state["files"] = files
            write_json(work / STATE, state)  # written last: the commit point
            for old in work.glob("*.safetensors"):
                if old.name not in files.values():
                    old.unlink()
    state["done"] = True
    write_json(work / STATE, state)
    keep = state["files"]["last" if distilling else "best"]  # distillation keeps its last
    model.load_state_dict(load_file(work / keep, device=str(device)))
    model.to(memory_format=torch.contiguous_format).eval()
    return {
        "epochs": state["epoch"],
        "best_epoch": state["best"]["epoch"] if not distilling else state["epoch"],
        "top1_val": state["best"]["val_top1"]
        if not distilling
        else state["history"][-1]["val_top1"],
        "minutes": sum(r["minutes"] for r in state["history"]),
        "history": state["history"],
    }


def _on(loader, device):
    for x, y in loader:
        yield x.to(device), y.to(device)
