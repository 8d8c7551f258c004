"""The phone runtime: BVLC GoogLeNet and its slimmed forms in ExecuTorch (XNNPACK).

At 224x224, 1 thread, batch 1, every model lowered with `deeprebirth.export.executorch` and
timed side by side in one process (interleaved runs, medians), in ExecuTorch and, for
comparison, ONNX Runtime. The weights are the committed Fashion-MNIST models (trained at
32x32; every one ends in global pooling, so it runs at 224): only speed is measured here,
but int8 needs trained weights for its parity check to mean anything.

* BVLC GoogLeNet as it is (its LRN rewritten so that the runtime can run it at all),
* slimmed (every merge of the plan at 224),
* slimmed + Tucker-2 at the ranks of the committed Tucker model (`TUCKER_RANKS_FROM`),
* int8 of slimmed + Tucker (the XNNPACK quantizer; ORT static quantization for ORT),
* SqueezeNet 1.1 and MobileNetV2, float and int8 the same ways.

All take one input channel (the references' first conv summed over RGB: the same function
on a gray image). Calibration uses 64 Fashion-MNIST training images. Writes
benchmarks/results/executorch_224.{json,md} with the command, commit, date and machine.

    .venv/bin/python benchmarks/executorch_speed.py [--runs 30] [--size 224]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import load_model_file
from deeprebirth.export import DEFAULT_INT8_FORMAT, OnnxModel, PteModel, export_int8
from deeprebirth.export.check import export_executorch
from deeprebirth.files import atomic_write_text, write_json
from deeprebirth.graph.capture import example_input
from deeprebirth.plan import Plan
from deeprebirth.profiling.bench import latencies
from deeprebirth.profiling.machine import machine_info
from deeprebirth.slimming import slim
from deeprebirth.zoo import adapt_input_channels

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/executorch_224"
W = "benchmarks/weights"
TEACHER = f"{W}/bvlc_googlenet_fashion_mnist_teacher.safetensors"
REFERENCES = {
    "squeezenet1_1": f"{W}/squeezenet1_1_fashion_mnist.safetensors",
    "mobilenet_v2": f"{W}/mobilenet_v2_fashion_mnist.safetensors",
}
TUCKER_RANKS_FROM = f"{W}/bvlc_googlenet_fashion_mnist_slim_ft3_tucker_pw"
LABELS = {
    "original": "BVLC GoogLeNet",
    "slimmed": "slimmed",
    "slimmed_tucker": "slimmed + Tucker-2",
    "slimmed_tucker_int8": "slimmed + Tucker-2 + int8",
    "squeezenet1_1": "SqueezeNet 1.1",
    "squeezenet1_1_int8": "SqueezeNet 1.1 + int8",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v2_int8": "MobileNetV2 + int8",
}


def images(split: str, size: int, n: int) -> torch.Tensor:
    ds = get_dataset("fashion-mnist", split, input_size=size, in_chans=1)
    return next(iter(get_loader(ds, n)))[0]


def gray(path: str) -> torch.nn.Module:
    model, _, in_chans = load_model_file(ROOT / path)
    if in_chans != 1:
        adapt_input_channels(model, 1)
    return model.eval()


def float_models(size: int) -> dict[str, torch.nn.Module]:
    original = gray(TEACHER)
    slimmed = slim(original, name="bvlc_googlenet", input_size=size, in_chans=1).model
    committed = Plan.load(ROOT / TUCKER_RANKS_FROM / "plan.json")
    entries = [copy.copy(e) for e in committed.enabled() if e.kind == "tucker"]
    plan = Plan(model=committed.model, input_shape=[1, 1, size, size], entries=entries)
    return {
        "original": original,
        "slimmed": slimmed,
        "slimmed_tucker": slim(slimmed, plan).model,
        **{key: gray(path) for key, path in REFERENCES.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    x = example_input(1, 1, args.size)
    check = images("val", args.size, 16)
    calibration = [images("train", args.size, 64)]
    floats = float_models(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        et, ort, delegation = {}, {}, {}
        for key, model in floats.items():
            print(f"lowering {key}", flush=True)
            r = export_executorch(model, Path(tmp) / f"{key}.pte", check)
            et[key], ort[key] = PteModel(r["path"]), model
            delegation[key] = r["delegation"]
            if key in ("slimmed_tucker", "squeezenet1_1", "mobilenet_v2"):
                q = export_executorch(model, Path(tmp) / f"{key}_int8.pte", check, calibration)
                et[f"{key}_int8"], delegation[f"{key}_int8"] = PteModel(q["path"]), q["delegation"]
                onnx = Path(tmp) / f"{key}_int8.onnx"
                export_int8(model, onnx, check, calibration, DEFAULT_INT8_FORMAT)
                ort[f"{key}_int8"] = OnnxModel(onnx)
        print("timing", flush=True)
        t_et = latencies(
            {k: (m, x) for k, m in et.items()}, runtimes=["executorch"], runs=args.runs, log=print
        )
        t_ort = latencies(
            {k: (m, x) for k, m in ort.items()}, runtimes=["ort"], runs=args.runs, log=print
        )
    rows = {
        k: {
            "executorch_ms": t_et["executorch"][k].median_ms,
            "ort_ms": t_ort["ort"][k].median_ms,
            "executorch": t_et["executorch"][k].to_dict(),
            "delegation": delegation[k],
        }
        for k in et
    }
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "command": " ".join(["python", *sys.argv]),
        "commit": commit,
        "input": [1, 1, args.size, args.size],
        "threads": 1,
        "runs": args.runs,
        "tucker_ranks_from": TUCKER_RANKS_FROM,
        "machine": machine_info(),
        "rows": rows,
    }
    write_json(OUT.with_suffix(".json"), result)
    atomic_write_text(OUT.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    rows, m = result["rows"], result["machine"]
    base_et, base_ort = rows["original"]["executorch_ms"], rows["original"]["ort_ms"]
    lines = [
        f"# ExecuTorch (XNNPACK) at {result['input'][2]}x{result['input'][3]}",
        "",
        f"`{result['command']}` at {result['commit'][:10]} — {m['date']}, {m['cpu']}, 1 thread, "
        f"batch 1, the committed Fashion-MNIST weights, {result['runs']} interleaved runs per "
        "runtime, medians; "
        f"speed-ups against BVLC GoogLeNet in the same runtime and run. Tucker ranks from "
        f"`{result['tucker_ranks_from']}`. int8: the XNNPACK quantizer in ExecuTorch, ORT static "
        "quantization (QDQ) in ONNX Runtime.",
        "",
        "| model | ExecuTorch ms | speed-up | ONNX Runtime ms | speed-up | portable (non-XNNPACK) ops |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, r in rows.items():
        portable = {k: v for k, v in r["delegation"]["portable_ops"].items() if k != "getitem"}
        lines.append(
            f"| {LABELS.get(key, key)} | {r['executorch_ms']:.2f} | {base_et / r['executorch_ms']:.2f}x "
            f"| {r['ort_ms']:.2f} | {base_ort / r['ort_ms']:.2f}x | "
            f"{', '.join(f'{k} x{v}' for k, v in portable.items()) or 'none'} |"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
