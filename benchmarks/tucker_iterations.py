"""How many HOOI iterations does a Tucker-2 start need? (issue #32: selection time)

Tucker-2 factors come from tensorly's ``partial_tucker``: an HOSVD start, then HOOI
iterations until the core's norm changes by less than 1e-4. Each iteration runs a full SVD
of each channel mode's unfolding, most of a selection's decomposition time. For every 3x3
(or larger) conv of two networks, at half and a quarter of its channels on both modes, this
times the decompositions and records the relative squared error of the weight,
``||W - W_tucker||^2 / ||W||^2``, for each cap on the iterations: the committed
Fashion-MNIST teacher (BVLC GoogLeNet, trained here) and ResNet-50 with random weights (the
selection-time benchmark's network). Writes benchmarks/results/tucker_iterations.{json,md}
with the command, commit, date and machine.

    .venv/bin/python benchmarks/tucker_iterations.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tensorly as tl
import torch
from provenance import provenance, record_row, write_page
from tensorly.decomposition import partial_tucker
from torch import nn

from deeprebirth import get_model
from deeprebirth.transforms.tucker import HOOI_ITERATIONS, _gram_svd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/tucker_iterations"
TEACHER = ROOT / "benchmarks/weights/fashion_mnist_64/teacher.safetensors"
CAPS = (1, 2, 3, 5, 50)


def networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "bvlc_googlenet (trained)": get_model(
            "bvlc_googlenet", num_classes=10, in_chans=1, checkpoint=str(TEACHER)
        ),
        "resnet50 (random)": get_model("resnet50", num_classes=10, in_chans=1),
    }


def run_one(label: str, model: nn.Module) -> dict:
    tl.set_backend("pytorch")
    weights = [
        m.weight.detach().float()
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.groups == 1
    ]
    out = {}
    for cap in CAPS:
        t0, errors = time.perf_counter(), []
        for w in weights:
            for share in (4, 2):
                ranks = [max(1, w.shape[0] // share), max(1, w.shape[1] // share)]
                (core, factors), _ = partial_tucker(
                    w, rank=ranks, modes=[0, 1], init="svd", n_iter_max=cap, svd=_gram_svd
                )
                approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
                errors.append(float(((approx - w).norm() / w.norm()) ** 2))
        seconds = time.perf_counter() - t0
        out[str(cap)] = {
            "seconds": seconds,
            "mean_error": sum(errors) / len(errors),
            "worst_error": max(errors),
        }
        print(f"{label}, at most {cap} iterations: {seconds:.1f} s, {out[str(cap)]}", flush=True)
    return {"model": label, "convs": len(weights), "caps": out}


def write_md(data: dict) -> None:
    lines = [
        "# Tucker-2 factors: HOOI iterations against time and error",
        "",
        "<!-- written by benchmarks/tucker_iterations.py from tucker_iterations.json: do not edit -->",
        "",
        "Every conv of 3x3 or larger, at a half and a quarter of its channels on both modes; "
        "seconds for all of them (float32, 2 threads), and the mean and worst relative "
        "squared error of the weights. tensorly stops earlier once the core's norm changes "
        f"by less than 1e-4. The selection caps it at {HOOI_ITERATIONS} "
        "(`transforms/tucker.py`, `HOOI_ITERATIONS`).",
        "",
        "| network | convs | at most | seconds | mean error | worst error | run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        for cap, c in r["caps"].items():
            lines.append(
                f"| {r['model']} | {r['convs']} | {cap} | {c['seconds']:.1f} "
                f"| {c['mean_error']:.5f} | {c['worst_error']:.5f} "
                f"| {r['date'][:10]}, {r['machine']['cpu']} |"
            )
    write_page(RESULTS.with_suffix(".md"), lines, data["rows"])


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    run = provenance()
    torch.set_num_threads(2)
    for label, model in networks().items():
        data = record_row(RESULTS.with_suffix(".json"), run_one(label, model) | run, ("model",))
        write_md(data)


if __name__ == "__main__":
    main()
