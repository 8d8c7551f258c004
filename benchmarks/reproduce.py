"""Every committed Fashion-MNIST 64x64 number, one step at a time.

    .venv/bin/python benchmarks/reproduce.py STEP [STEP ...] [--device auto|cpu|cuda]

Steps (each resumable: run the same command again after an interruption):

  teacher         BVLC GoogLeNet, 1 channel, 64x64, trained until validation top-1 stops
                  improving (benchmarks/train_classifier.py)

Each step writes its weights under benchmarks/weights/fashion_mnist_64/ and its entry in
benchmarks/results/fashion_mnist_64.json: path, input size and channels, top-1 on the
validation split (what every choice was made on) and on the test split (read once, for the
finished model), minutes, the command, the git commit, the date and the machine. The file
is only ever written by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_classifier import TrainRecipe, train_classifier  # noqa: E402

from deeprebirth import get_model  # noqa: E402
from deeprebirth.data import get_dataset, get_loader  # noqa: E402
from deeprebirth.evaluation import evaluate, load_model_file, save_weights  # noqa: E402
from deeprebirth.files import write_json  # noqa: E402
from deeprebirth.profiling.machine import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/fashion_mnist_64.json"
WEIGHTS = Path("benchmarks/weights/fashion_mnist_64")
SIZE, CHANS = 64, 1
DATA = "fashion-mnist"


def git_commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks")
    return f"{commit}+dirty" if dirty else commit


def started(work: Path) -> dict:
    """The provenance of a resumable step: the commit and command of each session that ran
    it (the first one made the run; later ones resumed it)."""
    path = work / "provenance.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({"commit": git_commit(), "command": " ".join(["python", *sys.argv])})
    write_json(path, runs)
    return {"commit": runs[0]["commit"], "resumed_at": [r["commit"] for r in runs[1:]]}


def record(key: str, entry: dict, provenance: dict) -> None:
    """Merge one model's entry into the results file, with its provenance."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"models": {}}
    info = machine_info()
    results["models"][key] = {
        **entry,
        "command": " ".join(["python", *sys.argv]),
        **provenance,
        "date": info.pop("date"),
        "machine": info,
    }
    write_json(RESULTS, results)


def top1(model: torch.nn.Module, split: str, in_chans: int = CHANS) -> float:
    ds = get_dataset(DATA, split, input_size=SIZE, in_chans=in_chans)
    return 100 * evaluate(model, get_loader(ds, 256))["top1"]


def trained(key: str, model_name: str, args, teacher_path: str | None = None) -> None:
    """Train (or distill) a classifier, save it as fp16 safetensors, evaluate what is saved."""
    recipe = TrainRecipe(input_size=SIZE, in_chans=CHANS)
    model = get_model(model_name, num_classes=10, in_chans=CHANS)
    work = Path(args.work) / key
    provenance = started(work)
    run = train_classifier(model, recipe, work, device=args.device)
    path = WEIGHTS / f"{key}.safetensors"
    meta = {"model": model_name, "num_classes": 10, "in_chans": CHANS, "input_size": SIZE}
    save_weights(model, ROOT / path, meta)
    saved, _, _ = load_model_file(ROOT / path)  # what is committed: the fp16 file
    record(
        key,
        {
            "path": str(path),
            "model": model_name,
            "input_size": SIZE,
            "in_chans": CHANS,
            "top1_val": top1(saved, "val"),
            "top1_test": top1(saved, "test"),
            "minutes": run["minutes"],
            "epochs": run["epochs"],
            "best_epoch": run["best_epoch"],
            "recipe": "benchmarks/train_classifier.py TrainRecipe defaults",
            "history": run["history"],
        },
        provenance,
    )


STEPS = {
    "teacher": lambda args: trained("teacher", "bvlc_googlenet", args),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("steps", nargs="+", choices=list(STEPS))
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    p.add_argument("--work", default="runs/fashion_mnist_64", help="resumable state of each step")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    os.chdir(ROOT)
    for step in args.steps:
        STEPS[step](args)


if __name__ == "__main__":
    main()
