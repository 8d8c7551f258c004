"""The paper's table, reproduced here: the Fashion-MNIST GoogLeNet family against SqueezeNet
1.1 and MobileNetV2 trained with the same recipe (benchmarks/train_teacher.py).

Two parts, each measured side by side in one process (1 thread, batch 1, interleaved runs,
medians):

* at 32x32, the size every network was trained at: the committed weights, with top-1 on
  the 10k Fashion-MNIST test images (the int8 model evaluated as the ONNX file it is);
* at 224x224, the paper's input size, for speed only: the same trained weights (all of
  these networks end in global pooling, so they run at any size), the slimmed model rebuilt
  at 224 from the teacher and decomposed at the committed Tucker model's ranks (not tuned:
  the same architecture as the committed model), int8 calibrated on Fashion-MNIST images
  upscaled to 224.

The GoogLeNet models take 1-channel input; torchvision's SqueezeNet and MobileNetV2 take
the gray image on 3 channels. Writes benchmarks/results/paper_table.{md,json} and the int8
model benchmarks/weights/bvlc_googlenet_fashion_mnist_slim_tucker_int8.onnx.

    .venv/bin/python benchmarks/paper_table.py [--runs 50] [--sizes 32,224]
"""

import argparse
import copy
import json
import os
import sys
import tempfile
from itertools import islice
from pathlib import Path

import torch

from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import evaluate, load_model_file
from deeprebirth.export import DEFAULT_INT8_FORMAT, INT8_FORMATS, OnnxModel, export_int8
from deeprebirth.graph import capture
from deeprebirth.graph.capture import example_input
from deeprebirth.plan import Plan
from deeprebirth.profiling.bench import latencies
from deeprebirth.profiling.machine import machine_info
from deeprebirth.profiling.stats import count_macs, count_params, peak_activation_bytes
from deeprebirth.slimming import load, slim

ROOT = Path(__file__).resolve().parents[1]
W = "benchmarks/weights"
TEACHER = f"{W}/bvlc_googlenet_fashion_mnist_teacher.safetensors"
INT8_FILE = f"{W}/bvlc_googlenet_fashion_mnist_slim_tucker_int8.onnx"
GOOGLENET_ROWS = {  # row: (label, file or directory, how it is built at 224)
    "original": ("BVLC GoogLeNet (teacher)", TEACHER),
    "slimmed": ("slimmed", f"{W}/bvlc_googlenet_fashion_mnist_slim_long_ft3"),
    "slimmed_tucker": ("slimmed + Tucker", f"{W}/bvlc_googlenet_fashion_mnist_slim_ft3_tucker_pw"),
}
REFERENCES = {
    "squeezenet1_1": ("SqueezeNet 1.1", f"{W}/squeezenet1_1_fashion_mnist.safetensors"),
    "mobilenet_v2": ("MobileNetV2", f"{W}/mobilenet_v2_fashion_mnist.safetensors"),
}

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=50)
p.add_argument("--sizes", default="32,224")
p.add_argument("--calibration-images", type=int, default=512)
args = p.parse_args()
os.chdir(ROOT)  # slimmed directories name their base by a path relative to the repository


def images(split: str, size: int, in_chans: int, n: int) -> list[torch.Tensor]:
    ds = get_dataset("fashion-mnist", split, input_size=size, in_chans=in_chans)
    return [x for x, _ in islice(get_loader(ds, 64), -(-n // 64))]


def int8_models(float_model, size: int, out_dir: Path, keep: str | None) -> dict:
    """Both int8 layouts of ``float_model``; the default one is kept at ``keep``."""
    calibration = images("train", size, 1, args.calibration_images)
    check = images("test", size, 1, 64)[0]
    rows = {}
    for fmt in INT8_FORMATS:
        path = keep if (keep and fmt == DEFAULT_INT8_FORMAT) else str(out_dir / f"int8_{fmt}.onnx")
        report = export_int8(float_model, path, check, calibration, fmt)
        rows[f"slimmed_tucker_int8_{fmt}"] = (f"slimmed + Tucker + int8 ({fmt})", path, report)
    return rows


def committed_tucker(path: str, size: int) -> Plan:
    """The Tucker entries of the committed model at ``path``, for a slimmed model at ``size``:
    the architecture timed at 224 is the one whose accuracy is reported at 32."""
    committed = Plan.load(ROOT / path / "plan.json")
    entries = [copy.copy(e) for e in committed.enabled() if e.kind == "tucker"]
    return Plan(model=committed.model, input_shape=[1, 1, size, size], entries=entries)


def part(size: int, tmp: Path) -> dict:
    print(f"--- {size}x{size}", flush=True)
    models: dict[str, dict] = {}
    teacher, _, _ = load_model_file(ROOT / TEACHER)
    for key, (label, path) in GOOGLENET_ROWS.items():
        if size == 32:
            model = teacher if key == "original" else load(ROOT / path)
            source = path
        elif key == "original":
            model = teacher
        elif key == "slimmed":  # rebuilt at 224 from the teacher, as the committed ones were
            model = slim(teacher, name="bvlc_googlenet", input_size=size, in_chans=1).model
        else:  # Tucker-2 on the slimmed model, at the committed (tuned) model's ranks
            model = slim(models["slimmed"]["model"], committed_tucker(path, size)).model
        rebuilt = size != 32 and key != "original"
        source = f"{TEACHER} (rebuilt at {size}, not tuned)" if rebuilt else path
        models[key] = {"label": label, "source": source, "model": model, "in_chans": 1}
    keep = str(ROOT / INT8_FILE) if size == 32 else None
    for key, (label, path, report) in int8_models(
        models["slimmed_tucker"]["model"], size, tmp, keep
    ).items():
        source = INT8_FILE if path == keep else f"int8 of the row above ({report['int8']})"
        models[key] = {
            "label": label,
            "source": source,
            "model": OnnxModel(path),
            "in_chans": 1,
            "int8_check": {k: report[k] for k in ("relative_error", "top1_agreement")},
        }
    for key, (label, path) in REFERENCES.items():
        model, _, in_chans = load_model_file(ROOT / path)
        models[key] = {"label": label, "source": path, "model": model, "in_chans": in_chans}

    inputs = {k: example_input(1, m["in_chans"], size) for k, m in models.items()}
    torch_models = {
        k: (m["model"], inputs[k])
        for k, m in models.items()
        if not isinstance(m["model"], OnnxModel)
    }
    timings = latencies(torch_models, runtimes=["torch"], runs=args.runs, log=print)["torch"]
    all_models = {k: (m["model"], inputs[k]) for k, m in models.items()}
    ort = latencies(all_models, runtimes=["ort"], runs=args.runs, log=print)["ort"]

    rows = {}
    for key, m in models.items():
        model, x = m["model"], inputs[key]
        row = {"label": m["label"], "source": m["source"], "input": list(x.shape)}
        row["torch_ms"] = timings[key].median_ms if key in timings else None
        row["ort_ms"] = ort[key].median_ms
        row["ort_speedup"] = ort["original"].median_ms / ort[key].median_ms
        if key in timings:
            row["torch_speedup"] = timings["original"].median_ms / timings[key].median_ms
        if isinstance(model, OnnxModel):  # int8: costs of its float twin, not re-counted
            row["int8_check"] = m["int8_check"]
        else:
            row["memory_mb"] = peak_activation_bytes(capture(model), x) / 2**20
            row["macs"] = count_macs(model, x)
            row["params"] = count_params(model)
        if size == 32:
            test = get_loader(
                get_dataset("fashion-mnist", "test", input_size=size, in_chans=m["in_chans"]), 256
            )
            row["top1"] = evaluate(model, test)["top1"]
            print(f"{m['label']}: top-1 {100 * row['top1']:.2f}%", flush=True)
        rows[key] = row
    return rows


def fmt(v, spec: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v / scale, spec)


def markdown(result: dict) -> str:
    lines = [
        "# The paper's table, on Fashion-MNIST",
        "",
        f"`{result['command']}` — {result['machine']['date']}, {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores, torch {result['machine']['torch']}, "
        f"onnxruntime {result['machine']['onnxruntime']}. 1 thread, batch 1, "
        f"{result['runs']} interleaved runs per runtime, medians; speed-up is against the "
        "original in the same run. Memory: peak activation memory (float32). "
        "int8 rows: memory, MACs and parameters as their float twin.",
        "",
    ]
    for size, rows in result["parts"].items():
        title = (
            "trained weights, top-1 on the 10k test images"
            if size == "32"
            else "speed only: same weights, slimmed models rebuilt at 224 and not tuned"
        )
        lines += [f"## {size}x{size} — {title}", ""]
        head = (
            "| model | PyTorch ms | speed-up | ORT ms | speed-up | memory MB | MMACs | params M |"
        )
        sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if size == "32":
            head, sep = head + " top-1 % |", sep + "---:|"
        lines += [head, sep]
        for row in rows.values():
            cells = [
                row["label"],
                fmt(row["torch_ms"], ".2f"),
                fmt(row.get("torch_speedup"), ".2f") + ("x" if row.get("torch_speedup") else ""),
                fmt(row["ort_ms"], ".2f"),
                f"{row['ort_speedup']:.2f}x",
                fmt(row.get("memory_mb"), ".2f"),
                fmt(row.get("macs"), ".1f", 1e6),
                fmt(row.get("params"), ".2f", 1e6),
            ]
            if size == "32":
                cells.append(f"{100 * row['top1']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


result = {
    "command": " ".join(["python", *sys.argv]),
    "runs": args.runs,
    "machine": machine_info(),
    "parts": {},
}
with tempfile.TemporaryDirectory() as tmp:
    for size in (int(s) for s in args.sizes.split(",")):
        result["parts"][str(size)] = part(size, Path(tmp))
out = ROOT / "benchmarks/results"
(out / "paper_table.json").write_text(json.dumps(result, indent=2) + "\n")
(out / "paper_table.md").write_text(markdown(result))
print(markdown(result))
if "32" in result["parts"]:  # the int8 model's entry beside the other Fashion-MNIST results
    fm = out / "fashion_mnist_googlenet.json"
    results = json.loads(fm.read_text())
    row = result["parts"]["32"][f"slimmed_tucker_int8_{DEFAULT_INT8_FORMAT}"]
    results["slimmed_tucker_int8"] = {
        "path": INT8_FILE,
        "top1": row["top1"],
        "int8": DEFAULT_INT8_FORMAT,
        "from": GOOGLENET_ROWS["slimmed_tucker"][1],
        "command": result["command"],
        "machine": result["machine"],
    }
    fm.write_text(json.dumps(results, indent=2) + "\n")
