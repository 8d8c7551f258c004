"""int8 as the export writes it since 2026-12-07, against before: what it quantizes.

Until 2026-12-07 ``export --int8`` quantized Conv, Gemm, MatMul and Concat only. Each
activation left float then cost a dequantize-activation-quantize round trip, and the
fused inception heads' split (whose pieces each had a ReLU) ran in float between two
such round trips. Now (:data:`deeprebirth.export.int8.QUANTIZED_OPS`) ReLU and ReLU6 fold
into the conv's output range, the export computes the heads' ReLUs before their split
(:mod:`deeprebirth.export.rewrite`) and the split runs on the int8 tensor. Here each
committed Fashion-MNIST 64x64 model is quantized three ways, everything else the same
(min/max calibration on the same 512 training images, weights per channel, conv pairs
smoothed):

- ``before``: the export until 2026-12-07 (its graph, its four ops);
- ``activations``: that graph with ReLU/ReLU6 quantized too;
- ``now``: the export now;

timed side by side in ONNX Runtime (1 thread, batch 1, each beside ``before``: 5 sessions of
15 runs, median of the sessions' medians) and judged by top-1 on the 5,000 validation images
(the test split is not read). Where the rewrite changes the graph (the slimmed GoogLeNets),
the float models before and after it are timed side by side too.

Writes benchmarks/results/int8_activations.{json,md} with the command, commit, date and
machine (a run replaces the rows of its models).

    .venv/bin/python benchmarks/int8_activations.py [--models squeezenet1_1,mobilenet_v2]

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import islice
from pathlib import Path
from unittest import mock

import onnx
import torch
from provenance import provenance, record_row, write_page

import deeprebirth.export.onnx as onnx_export
from deeprebirth.artifacts import TORCH_KINDS, open_model
from deeprebirth.data import get_dataset, get_loader
from deeprebirth.export import OnnxModel, to_onnx
from deeprebirth.export.check import SMOOTHING_IMAGES
from deeprebirth.export.int8 import QUANTIZED_OPS, quantize_int8
from deeprebirth.export.smooth import smooth_linear_pairs
from deeprebirth.profiling.bench import latencies

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "benchmarks/weights/fashion_mnist_64"
RESULTS = ROOT / "benchmarks/results/int8_activations"
#: The committed float models that have an int8 twin in the paper's table.
MODELS = {
    "squeezenet1_1": ("SqueezeNet 1.1", WEIGHTS / "squeezenet1_1.safetensors"),
    "mobilenet_v2": ("MobileNetV2", WEIGHTS / "mobilenet_v2.safetensors"),
    "mobilenet_v2_depth": ("MobileNetV2, depth-compressed", WEIGHTS / "mobilenet_v2_depth"),
    "slimmed": ("slimmed GoogLeNet", WEIGHTS / "slimmed"),
    "slimmed_tucker": ("slimmed + Tucker-2 GoogLeNet", WEIGHTS / "slimmed_tucker"),
}
#: What the export quantized until 2026-12-07.
BEFORE_OPS = ["Conv", "Gemm", "MatMul", "Concat"]
#: The three ways, in the page's order: (quantized ops, the export's graph rewrite on).
WAYS = {
    "before": (BEFORE_OPS, False),
    "activations": ([*BEFORE_OPS, "Relu", "Clip"], False),
    "now": (QUANTIZED_OPS, True),
}
CALIBRATION_IMAGES = 512
SESSIONS, RUNS = 5, 15


def loader(split: str, batch: int = 64):
    return get_loader(get_dataset("fashion-mnist", split, input_size=64, in_chans=1), batch)


def top1(model: OnnxModel, batches) -> float:
    hits = n = 0
    for images, labels in batches:
        hits += (model(images).argmax(1) == labels).sum().item()
        n += len(labels)
    return 100 * hits / n


def export(model: torch.nn.Module, example: torch.Tensor, rewrite: bool):
    """The ONNX export, with or without its graph rewrite (``before``: without)."""
    if rewrite:
        return to_onnx(model, example)
    with mock.patch.object(onnx_export, "activations_before_splits", lambda m: m):
        return to_onnx(model, example)


def timed(models: dict[str, OnnxModel], example: torch.Tensor, beside: str) -> dict:
    got = latencies(
        {k: (m, example) for k, m in models.items()},
        runtimes=["ort"],
        runs=RUNS,
        sessions=SESSIONS,
        beside=beside,
    )["ort"]
    return {k: got[k].median_ms for k in models}


def measure(key: str, calibration: list[torch.Tensor], val: list) -> dict:
    name, path = MODELS[key]
    model = open_model(str(path), TORCH_KINDS, "int8_activations.py").model.eval()
    images = torch.cat(calibration)[:SMOOTHING_IMAGES]
    smoothed, _ = smooth_linear_pairs(model, images)
    graphs = {rewrite: export(smoothed, calibration[0], rewrite) for rewrite in (False, True)}
    rewritten = len(graphs[True].graph.node) != len(graphs[False].graph.node)
    row: dict = {"model": key, "name": name, "graph_rewritten": rewritten}
    x = calibration[0][:1]
    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        for way, (ops, rewrite) in WAYS.items():
            out = quantize_int8(
                graphs[rewrite],
                Path(tmp) / f"{way}.onnx",
                (b.numpy() for b in calibration),
                op_types_to_quantize=ops,
            )
            built[way] = OnnxModel(out)
            row[f"{way}_top1_val"] = top1(built[way], val)
            print(f"{key} {way}: top-1 val {row[f'{way}_top1_val']:.2f}", flush=True)
        for way, ms in timed(built, x, "before").items():
            row[f"{way}_ms"] = ms
        if rewritten:
            floats = {}
            for rewrite in (False, True):
                onnx.save(graphs[rewrite], Path(tmp) / f"float_{rewrite}.onnx")
                floats[f"float_{'now' if rewrite else 'before'}"] = OnnxModel(
                    Path(tmp) / f"float_{rewrite}.onnx"
                )
            for way, ms in timed(floats, x, "float_before").items():
                row[f"{way}_ms"] = ms
    print(
        f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_ms")),
        flush=True,
    )
    return row


def page(rows: list[dict]) -> list[str]:
    lines = [
        "# int8 as the export writes it since 2026-12-07, against before",
        "",
        "<!-- written by benchmarks/int8_activations.py from int8_activations.json: do not edit -->",
        "",
        "The committed Fashion-MNIST 64x64 models, each quantized three ways by ONNX Runtime's "
        "static quantizer (QDQ, weights per channel, min/max ranges from the same 512 training "
        "images, conv pairs smoothed): `before`, the export until 2026-12-07 (Conv, Gemm, MatMul "
        "and Concat quantized); `activations`, ReLU and ReLU6 quantized too (folded into the "
        "conv's output range); `now`, the export since (also the fused inception heads' ReLUs "
        "computed before their split, and the split on int8). Timed side by side in ONNX "
        f"Runtime, 1 thread, batch 1 ({SESSIONS} sessions of {RUNS} runs, each beside "
        "`before`); top-1 on the 5,000 validation images. `float`: the float models with and "
        "without the split rewrite, timed side by side (only where it changes the graph).",
        "",
        "| model | int8 before ms | activations ms | now ms | now / before | top-1 val % before "
        "| activations | now | float before ms | float now ms | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        floats = (
            f"{r['float_before_ms']:.3f} | {r['float_now_ms']:.3f}"
            if r.get("graph_rewritten")
            else "— | —"
        )
        lines.append(
            f"| {r['name']} | {r['before_ms']:.3f} | {r['activations_ms']:.3f} "
            f"| {r['now_ms']:.3f} | {r['now_ms'] / r['before_ms']:.3f} "
            f"| {r['before_top1_val']:.2f} | {r['activations_top1_val']:.2f} "
            f"| {r['now_top1_val']:.2f} | {floats} "
            f"| {r['date'][:10]}, {r['machine']['cpu']} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated keys")
    args = p.parse_args()
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    run = provenance()
    calibration = [x for x, _ in islice(loader("train"), CALIBRATION_IMAGES // 64)]
    val = list(loader("val", 256))
    for key in keys:
        data = record_row(
            RESULTS.with_suffix(".json"), {**measure(key, calibration, val), **run}, ("model",)
        )
    order = list(MODELS)
    rows = sorted(data["rows"], key=lambda r: order.index(r["model"]))
    write_page(RESULTS.with_suffix(".md"), page(rows), rows)
    print(f"wrote {RESULTS.with_suffix('.md').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
