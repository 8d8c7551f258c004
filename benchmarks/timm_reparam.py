"""Re-parameterizable timm models, exact-only slim against timm's own ``reparameterize()``.

    .venv/bin/python benchmarks/timm_reparam.py [--models repvgg_a0,mobileone_s0] [--size 224]

For each model (random weights, batch-norm statistics randomised so that every fold
matters): the original, ``deeprebirth.slim(model, exact_only=True)`` (which finds the summed
branches itself: ``sum_parallel``) and timm's ``reparameterize_model`` (each family's own
code), exported to ONNX and timed side by side in ONNX Runtime, interleaved in one
process, 1 thread, batch 1, medians of three sessions each. Output parity of both against the original is the
largest absolute difference over the largest absolute output (float32, eager).

Writes benchmarks/results/timm_reparam.{json,md} with the command, commit, date and machine.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx import helper

from deeprebirth import get_model
from deeprebirth.export.onnx import to_onnx
from deeprebirth.files import atomic_write_text, write_json
from deeprebirth.graph import example_input
from deeprebirth.machine import cpu_label
from deeprebirth.profiling.bench import latencies
from deeprebirth.slimming import slim
from deeprebirth.transforms.runner import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
ARMS = ("original", "deeprebirth", "timm")
#: Sessions per arm, interleaved: one ONNX Runtime session of a model can run a few percent
#: off another of the same model (the median of their medians is kept).
SESSIONS = 3


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine terms away from identity, so that folds matter."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def optimized_graph(model: torch.nn.Module, x: torch.Tensor) -> list:
    """The graph ONNX Runtime runs (after its optimisations): each node's op, attributes
    and weight shapes, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        proto = to_onnx(model, x)
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    return [
        (
            n.op_type,
            sorted((a.name, str(helper.get_attribute_value(a))) for a in n.attribute),
            [shapes.get(i) for i in n.input],
        )
        for n in graph.node
    ]


def run_model(name: str, size: int, runs: int) -> dict:
    from timm.utils import reparameterize_model  # timm: the [timm] extra

    torch.manual_seed(0)
    original = get_model(f"timm:{name}")
    randomize_batchnorm(original)
    x = example_input(1, 3, size)
    result = slim(original, name=f"timm:{name}", input_size=size, exact_only=True)
    models = {
        "original": original,
        "deeprebirth": result.model,
        "timm": reparameterize_model(copy.deepcopy(original)).eval(),
    }
    with torch.no_grad():
        outputs = {k: m(x) for k, m in models.items()}
    parity = {k: relative_error(outputs[k], outputs["original"]) for k in ARMS[1:]}
    kinds: dict[str, int] = {}
    for entry_id in result.report.applied:
        kind = entry_id.partition(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    timings = latencies(
        {k: (m, x) for k, m in models.items()},
        runtimes=["ort"],
        runs=runs,
        warmup=max(5, runs // 10),
        sessions=SESSIONS,
    )["ort"]
    ms = {k: t.median_ms for k, t in timings.items()}
    same = optimized_graph(models["deeprebirth"], x) == optimized_graph(models["timm"], x)
    print(
        f"{name}: original {ms['original']:.2f} ms, deeprebirth {ms['deeprebirth']:.2f} ms, "
        f"timm {ms['timm']:.2f} ms; parity {parity['deeprebirth']:.1e} / {parity['timm']:.1e}"
    )
    return {
        "ort_ms": {k: t.to_dict() for k, t in timings.items()},
        "speedup_vs_original": {k: ms["original"] / ms[k] for k in ARMS[1:]},
        "deeprebirth_vs_timm": ms["timm"] / ms["deeprebirth"],
        "same_graph_as_timm": same,
        "sessions": SESSIONS,
        "relative_error": parity,
        "applied": kinds,
        "reverted": [r[0] for r in result.report.reverted],
    }


def table(data: dict) -> str:
    lines = [
        f"# Exact-only slim against timm's reparameterize() ({data['size']}x{data['size']}, "
        "ONNX Runtime, 1 thread, batch 1)",
        "",
        f"`{data['command']}` at {data['commit'][:10]}, {data['date']}, "
        f"{cpu_label(data['machine'])}. Medians of {data['runs']} interleaved runs in each of "
        f"{next(iter(data['models'].values())).get('sessions', 1)} sessions per model (the median of their medians); speed-up "
        "against the original; parity: largest output difference over the largest output; same "
        "graph: the two ONNX files ONNX Runtime runs after its optimisations have the same "
        "nodes, attributes and weight shapes.",
        "",
        "| model | original ms | deeprebirth ms (speed-up) | timm reparameterize ms (speed-up) "
        "| deeprebirth / timm speed | same graph in ORT | parity deeprebirth | parity timm "
        "| merges applied |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in data["models"].items():
        ms = {k: r["ort_ms"][k]["median_ms"] for k in ARMS}
        sp = r["speedup_vs_original"]
        merges = ", ".join(f"{k} {n}" for k, n in sorted(r["applied"].items()))
        lines.append(
            f"| {name} | {ms['original']:.2f} | {ms['deeprebirth']:.2f} "
            f"({sp['deeprebirth']:.2f}x) | {ms['timm']:.2f} ({sp['timm']:.2f}x) "
            f"| {r['deeprebirth_vs_timm']:.2f}x | {'yes' if r.get('same_graph_as_timm') else 'no'} "
            f"| {r['relative_error']['deeprebirth']:.1e} "
            f"| {r['relative_error']['timm']:.1e} | {merges} |"
        )
    return "\n".join(lines) + "\n"


def sweep(stem: str, doc: str, run, write_table, models: str, size: int, runs: int) -> None:
    """Parse ``--models/--size/--runs``, ``run(name, size, runs)`` each model, and write
    benchmarks/results/STEM.json and STEM.md (``write_table``) with the run's provenance."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=models)
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--runs", type=int, default=runs)
    args = p.parse_args()
    data = {
        **provenance(),
        "size": args.size,
        "runs": args.runs,
        "models": {name: run(name, args.size, args.runs) for name in args.models.split(",")},
    }
    write_json(RESULTS / f"{stem}.json", data)
    atomic_write_text(RESULTS / f"{stem}.md", write_table(data))
    print(f"wrote {RESULTS / f'{stem}.md'}")


def main() -> None:
    sweep("timm_reparam", __doc__, run_model, table, "repvgg_a0,mobileone_s0", 224, 100)


if __name__ == "__main__":
    main()
