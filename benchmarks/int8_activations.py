"""int8 with the activations folded into the conv before them, against left float.

``export --int8`` quantizes Conv, Gemm, MatMul and Concat, and since 2026-12-07 ReLU and
ReLU6 (``Clip``) too (:data:`deeprebirth.export.int8.QUANTIZED_OPS`): the quantizer then folds
each into its conv's output quantization. Left float, each activation costs a
dequantize-activation-quantize round trip. Here each committed Fashion-MNIST 64x64 model is
quantized both ways, with everything else the same (min/max calibration on the same 512
training images, weights per channel, the conv pairs smoothed as the export does), and

- timed side by side in ONNX Runtime (1 thread, batch 1, the folded model beside the float
  one: 5 sessions of 15 runs, median of the sessions' medians);
- judged by top-1 on the 5,000 validation images (the test split is not read).

Writes benchmarks/results/int8_activations.{json,md} with the command, commit, date and
machine (a run replaces the rows of its models).

    .venv/bin/python benchmarks/int8_activations.py [--models squeezenet1_1,mobilenet_v2]

Measure on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from itertools import islice
from pathlib import Path

import onnx
import torch
from provenance import provenance, record_row, write_page

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
ACTIVATIONS = ("Relu", "Clip")
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


def measure(key: str, calibration: list[torch.Tensor], val: list) -> dict:
    name, path = MODELS[key]
    model = open_model(str(path), TORCH_KINDS, "int8_activations.py").model.eval()
    images = torch.cat(calibration)[:SMOOTHING_IMAGES]
    smoothed, _ = smooth_linear_pairs(model, images)
    proto = to_onnx(smoothed, calibration[0])
    ways = {
        "float": [op for op in QUANTIZED_OPS if op not in ACTIVATIONS],
        "folded": QUANTIZED_OPS,
    }
    row: dict = {"model": key, "name": name}
    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        for way, ops in ways.items():
            out = quantize_int8(
                proto,
                Path(tmp) / f"{way}.onnx",
                (b.numpy() for b in calibration),
                op_types_to_quantize=ops,
            )
            built[way] = OnnxModel(out)
            kinds = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
            row[f"{way}_activations_in_graph"] = sum(kinds[a] for a in ACTIVATIONS)
            row[f"{way}_quantize_nodes"] = kinds["QuantizeLinear"]
            row[f"{way}_top1_val"] = top1(built[way], val)
            print(f"{key} {way}: top-1 val {row[f'{way}_top1_val']:.2f}", flush=True)
        x = calibration[0][:1]
        timed = latencies(
            {way: (m, x) for way, m in built.items()},
            runtimes=["ort"],
            runs=RUNS,
            sessions=SESSIONS,
            beside="float",
        )["ort"]
    for way in ways:
        row[f"{way}_ms"] = timed[way].median_ms
    row["ratio"] = row["folded_ms"] / row["float_ms"]
    print(
        f"{key}: {row['float_ms']:.3f} -> {row['folded_ms']:.3f} ms ({row['ratio']:.3f})",
        flush=True,
    )
    return row


def page(rows: list[dict]) -> list[str]:
    lines = [
        "# int8 with ReLU/ReLU6 folded into the conv before, against left float",
        "",
        "<!-- written by benchmarks/int8_activations.py from int8_activations.json: do not edit -->",
        "",
        "The committed Fashion-MNIST 64x64 models, each quantized twice by ONNX Runtime's static "
        "quantizer (QDQ, weights per channel, min/max ranges from the same 512 training images, "
        "conv pairs smoothed): with the activations left float (the export until 2026-12-07) and "
        "with them quantized (folded into the conv's output range). Timed side by side in ONNX "
        f"Runtime, 1 thread, batch 1 ({SESSIONS} sessions of {RUNS} runs, the folded model beside "
        "the other); top-1 on the 5,000 validation images.",
        "",
        "| model | activations float ms | folded ms | folded / float | float-op activations left "
        "| quantize nodes | top-1 val %, float activations | top-1 val %, folded | run |",
        "|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['float_ms']:.3f} | {r['folded_ms']:.3f} | {r['ratio']:.3f} "
            f"| {r['float_activations_in_graph']} -> {r['folded_activations_in_graph']} "
            f"| {r['float_quantize_nodes']} -> {r['folded_quantize_nodes']} "
            f"| {r['float_top1_val']:.2f} | {r['folded_top1_val']:.2f} "
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
