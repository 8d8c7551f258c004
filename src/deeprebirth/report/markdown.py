"""The slimming report: ``DIR/report.md`` with its plots and ``DIR/report.json``.

What a person reads after ``deeprebirth slim``: the plan applied; latency in each runtime,
peak activation memory, MACs and parameters, original and slimmed side by side (measured
interleaved in one process); where the time goes per layer kind before and after; accuracy
before and after when data was given; reference networks measured the same way; energy
where the machine exposes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..artifacts import TORCH_KINDS, open_model
from ..files import atomic_write_text, write_json
from ..graph.capture import capture
from ..graph.taxonomy import KINDS, is_tensor_kind
from ..machine import cpu_label, machine_info
from ..planning.exact_timing import left_off_why
from ..planning.select import MAX_CALIBRATION_MISS
from ..profiling.bench import latencies
from ..profiling.plot import RUNTIME_LABELS
from ..profiling.profile import profile
from ..profiling.stats import count_macs, count_params, peak_activation_bytes
from ..recipe import ModelConfig
from .energy import energy_note, energy_per_call_mj
from .plots import plot_accuracy_latency, plot_kinds_before_after

#: Reference networks measured beside every slimmed model (torchvision, random weights).
REFERENCES = ("squeezenet1_1", "mobilenet_v2")


def reference_model(
    ref: str, num_classes: int, in_chans: int = 3
) -> tuple[str, nn.Module, int, bool]:
    """``(name, model, in_chans, trained)`` for a reference: a zoo name (random weights,
    built for ``in_chans``, the slimmed model's), a weights file written by deeprebirth or a
    slimmed directory (trained; they name their model and channels; a slimmed directory is
    named by its last two path parts, e.g. ``fashion_mnist_64/slimmed``)."""
    spec = ModelConfig(ref, num_classes=num_classes, in_chans=in_chans)
    a = open_model(spec, TORCH_KINDS, "report.references")
    return a.label, a.model, a.spec.in_chans, a.trained


def _costs(model: nn.Module, x: torch.Tensor) -> dict:
    return {
        "macs": count_macs(model, x),
        "params": count_params(model),
        "peak_activation_mb": peak_activation_bytes(capture(model), x) / 2**20,
    }


def build_report(
    original: nn.Module,
    slimmed: nn.Module,
    input_shape: Sequence[int],
    *,
    plan,
    slim_report,
    accuracy: dict | None = None,
    selection: dict | None = None,
    references: Sequence[str] = REFERENCES,
    runtimes: Sequence[str] = ("torch", "ort"),
    threads: int = 1,
    runs: int = 20,
    command: str = "",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Measure everything the report shows; returns it as a JSON-able dict.

    ``references``: zoo names (random weights: latency only) or weights files written by
    deeprebirth (trained: their accuracy, when in ``accuracy``, is shown too).
    """
    _, c, h, _ = input_shape
    x = torch.randn(1, c, h, h, generator=torch.Generator().manual_seed(0))
    num_classes = slimmed(x).shape[1]
    models = {"original": (original.eval(), x), "slimmed": (slimmed.eval(), x)}
    skipped, trained = [], []
    for spec in references:  # a trained 3-channel reference gets the image repeated
        name, ref, ref_chans, is_trained = reference_model(spec, num_classes, c)
        xr = x if ref_chans == c else x[:, :1].expand(1, ref_chans, h, h).contiguous()
        try:
            with torch.no_grad():
                ref.eval()(xr)
        except RuntimeError:
            skipped.append(name)  # e.g. SqueezeNet needs more than 16x16
            continue
        models[name] = (ref, xr)
        if is_trained:
            trained.append(name)
    log("measuring latency: original, slimmed and references, interleaved")
    timings = latencies(models, runtimes=runtimes, threads=threads, runs=runs, log=log)
    log("profiling layer kinds before and after")
    kw = dict(
        runtimes=runtimes, threads=threads, input_size=h, in_chans=c, runs=5, warmup=2, layer_runs=5
    )
    before, after = profile(original, name="original", **kw), profile(slimmed, name="slimmed", **kw)
    energy = {
        k: energy_per_call_mj(lambda m=m, x=x: m(x)) for k, (m, x) in list(models.items())[:2]
    }
    return {
        "command": command,
        "machine": machine_info(),
        "model": plan.model,
        "input_shape": [1, c, h, h],
        "threads": threads,
        "plan": [
            {
                "id": e.id,
                "kind": e.kind,
                "exact": e.exact,
                "macs_saved": e.macs_saved,
                "status": "applied"
                if e.id in slim_report.applied
                else "reverted"
                if e.id in dict(slim_report.reverted)
                else left_off_why(e) or "skipped",
            }
            for e in plan.entries
        ],
        "latency": {rt: {k: t.to_dict() for k, t in ts.items()} for rt, ts in timings.items()},
        "costs": {k: _costs(m, xx) for k, (m, xx) in models.items()},
        "by_kind": {
            "original": {rt: d["by_kind"] for rt, d in before["runtimes"].items()},
            "slimmed": {rt: d["by_kind"] for rt, d in after["runtimes"].items()},
        },
        "non_tensor_share": {
            "original": {rt: d["non_tensor_share"] for rt, d in before["runtimes"].items()},
            "slimmed": {rt: d["non_tensor_share"] for rt, d in after["runtimes"].items()},
        },
        "accuracy": accuracy,
        "selection": selection,
        "energy_mj": energy if any(v is not None for v in energy.values()) else None,
        "energy_note": energy_note(),
        "references_skipped": skipped,
        "references_trained": trained,
        "_profiles": (before, after),
    }


def _top1(accuracy: dict, name: str) -> float | None:
    """Top-1 of a network in the report (the original is the tuning's teacher), if measured."""
    return accuracy.get({"original": "teacher"}.get(name, name), {}).get("top1")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _selection_lines(sel: dict) -> list[str]:
    x = sel.get("extra", {})
    blocks = x.get("latency_model") == "blocks"
    how = (
        "Each option's latency is the sum of the network's blocks (between cuts every option "
        "keeps) as the option leaves them, each block timed alone on the runtime, plus a "
        "constant and a price per MB of its weights, both fitted on whole networks (the base "
        "and a few plans timed whole)"
        if blocks
        else "Each option was applied alone to the exact-only model and measured on the runtime"
    )
    # blocks that missed a plan they were calibrated on: each choice was timed whole
    by_blocks = blocks and x.get("judged", "blocks") == "blocks"
    if blocks and not by_blocks:
        how += (
            f"; the model missed one of those plans by more than {MAX_CALIBRATION_MISS:.0%}, "
            "so each choice was timed whole beside the base"
        )
    judged = "its blocks predicted" if by_blocks else "measured"
    predicted = x["blocks_ms"] if blocks else sel["predicted_ms"]
    n = x.get("cost_batches")
    when = (
        f"after {n} training batches per stage of layer-wise tuning and {n} of fine-tune"
        if n
        else "before tuning"
    )
    lines = [
        "",
        f"## Selection under a latency budget of {sel['budget_ms']:.2f} ms ({RUNTIME_LABELS.get(sel['runtime'], sel['runtime'])})",
        "",
        f"{how} (the lookup table); its cost is the output's relative squared error {when}. "
        "The cheapest set whose savings reach the budget was found by dynamic "
        f"programming; when the choice ({judged}) missed the budget, more savings were asked "
        "of the table.",
        "",
        f"Exact merges only: {sel['base_ms']:.2f} ms. Predicted with the chosen options: "
        f"{predicted:.2f} ms; measured: {x.get('measured_ms', float('nan')):.2f} ms "
        f"(original {x.get('original_ms', float('nan')):.2f} ms, so "
        f"{x.get('measured_ms', float('nan')) / x.get('original_ms', float('nan')):.2f} of it; "
        "every merge, the fixed plan: "
        f"{x.get('fixed_plan_ms', float('nan')):.2f} ms). Output error: "
        f"{x.get('error', float('nan')):.2e} chosen vs {x.get('fixed_plan_error', float('nan')):.2e} fixed plan.",
        "",
    ]
    if x.get("out_of_reach"):
        lines += [
            "**The budget is out of reach**: every option together does not meet it; this is "
            'that plan, the closest the options come (`select.out_of_reach = "fastest"`).',
            "",
        ]
    for i, r in enumerate(sel.get("rounds", []), 1):
        lines.append(
            f"- round {i}: asked the table for {r['need_ms']:.3f} ms of savings; the savings "
            f"add up to {r['predicted_ms']:.3f} ms, {judged} "
            f"{r['blocks_ms' if by_blocks else 'measured_ms']:.3f} ms"
        )
    if blocks:
        lines += ["", "| block of the selected plan | ms (timed alone) |", "|---|---:|"]
        lines += [f"| {b['block']} | {b['ms']:.3f} |" for b in x["blocks"]]
        total = sum(b["ms"] for b in x["blocks"])
        per_mb, mb = x.get("ms_per_weight_mb", 0.0), x.get("weights_mb", 0.0)  # 0: older runs
        lines.append(f"| sum | {total:.3f} |")
        lines.append(f"| constant (fitted on plans timed whole) | {x['between_blocks_ms']:+.3f} |")
        lines.append(f"| {mb:.2f} MB of weights at {per_mb:.4f} ms per MB | {per_mb * mb:+.3f} |")
        fitted = x.get("calibration", [])
        if fitted:
            lines += [
                "",
                "The constant and the price of weights were fitted on these networks, timed "
                "whole beside the base (the base first; then every group's fastest option "
                "and random option sets):",
                "",
                "| network | weights MB | blocks ms | measured ms | predicted ms |",
                "|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {'base' if i == 0 else f'plan {i}'} | {r['weights_mb']:.2f} "
                f"| {r['blocks_ms']:.3f} | {r['measured_ms']:.3f} | {r['predicted_ms']:.3f} |"
                for i, r in enumerate(fitted)
            ]
    lines += [
        "",
        "| option | saves (ms) | error | chosen |",
        "|---|---:|---:|:---:|",
    ]
    for o in sorted(sel["options"], key=lambda o: -o["saving_ms"]):
        lines.append(
            f"| {o['key']} | {o['saving_ms']:.3f} | {o['cost']:.2e} | {'yes' if o['chosen'] else ''} |"
        )
    return lines


def write_report(data: dict, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and the two PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    before, after = data.pop("_profiles")
    plot_kinds_before_after(before, after, out_dir / "report_kinds.png")
    runtime = "ort" if "ort" in data["latency"] else next(iter(data["latency"]))
    acc = data.get("accuracy") or {}
    points = [
        {
            "name": name,
            "latency_ms": t["median_ms"],
            "top1": _top1(acc, name),
        }
        for name, t in data["latency"][runtime].items()
    ]
    plot_accuracy_latency(points, out_dir / "report_accuracy_latency.png", runtime)
    write_json(out_dir / "report.json", data)

    shape = "x".join(map(str, data["input_shape"]))
    lines = [
        f"# Slimming report: {data['model']}",
        "",
        f"Input {shape}, {data['threads']} thread(s), batch 1; measured {data['machine']['date']} on "
        f"{cpu_label(data['machine'])}, {data['machine']['cores']} cores, torch {data['machine']['torch']}, "
        f"onnxruntime {data['machine']['onnxruntime']}. Latencies are medians of runs interleaved in one process.",
        "",
        f"Command: `{data['command']}`" if data["command"] else "",
        "",
        "## Original and slimmed, side by side",
        "",
        "| | original | slimmed | original / slimmed |",
        "|---|---:|---:|---:|",
    ]
    for rt, ts in data["latency"].items():
        a, b = ts["original"]["median_ms"], ts["slimmed"]["median_ms"]
        lines.append(
            f"| {RUNTIME_LABELS.get(rt, rt)} latency (ms) | {a:.2f} | {b:.2f} | {_ratio(a, b)} |"
        )
    ca, cb = data["costs"]["original"], data["costs"]["slimmed"]
    lines += [
        f"| peak activation memory (MB) | {ca['peak_activation_mb']:.2f} | {cb['peak_activation_mb']:.2f} | {_ratio(ca['peak_activation_mb'], cb['peak_activation_mb'])} |",
        f"| MACs (M) | {ca['macs'] / 1e6:.1f} | {cb['macs'] / 1e6:.1f} | {_ratio(ca['macs'], cb['macs'])} |",
        f"| parameters (M) | {ca['params'] / 1e6:.2f} | {cb['params'] / 1e6:.2f} | |",
    ]
    if acc:
        t, s = acc["teacher"], acc["slimmed"]
        lines += [
            f"| top-1 on the test split (%) | {100 * t['top1']:.2f} | {100 * s['top1']:.2f} | {100 * (s['top1'] - t['top1']):+.2f} points |",
            f"| top-5 on the test split (%) | {100 * t['top5']:.2f} | {100 * s['top5']:.2f} | {100 * (s['top5'] - t['top5']):+.2f} points |",
        ]
    else:
        lines += ["", "No data was given, so accuracy was not measured."]
    lines += ["", "## Where the time goes", "", "![time per layer kind](report_kinds.png)", ""]
    for rt in data["by_kind"]["original"]:
        lines += [
            f"**{RUNTIME_LABELS.get(rt, rt)}** (ms per inference, sum of layers)",
            "",
            "| kind | original | slimmed |",
            "|---|---:|---:|",
        ]
        bo, sl = data["by_kind"]["original"][rt], data["by_kind"]["slimmed"][rt]
        for kind in KINDS:
            if kind in bo or kind in sl:
                tag = "" if is_tensor_kind(kind) else " (non-tensor)"
                lines.append(
                    f"| {kind}{tag} | {bo.get(kind, {}).get('ms', 0):.2f} | {sl.get(kind, {}).get('ms', 0):.2f} |"
                )
        nts = data["non_tensor_share"]
        lines += [
            f"| non-tensor share | {100 * nts['original'][rt]:.1f}% | {100 * nts['slimmed'][rt]:.1f}% |",
            "",
        ]
    lines += [
        "## Accuracy and latency, with reference networks",
        "",
        "![accuracy vs latency](report_accuracy_latency.png)",
        "",
    ]
    acc = data.get("accuracy") or {}
    lines += [
        "| network | "
        + " | ".join(f"{RUNTIME_LABELS.get(rt, rt)} ms" for rt in data["latency"])
        + " | MACs (M) | params (M) | top-1 (%) |"
    ]
    lines += ["|---|" + "---:|" * (len(data["latency"]) + 3)]
    for name in data["costs"]:
        ms = " | ".join(f"{data['latency'][rt][name]['median_ms']:.2f}" for rt in data["latency"])
        c = data["costs"][name]
        top1 = _top1(acc, name)
        top1 = "—" if top1 is None else f"{100 * top1:.2f}"
        lines.append(
            f"| {name} | {ms} | {c['macs'] / 1e6:.1f} | {c['params'] / 1e6:.2f} | {top1} |"
        )
    trained = data.get("references_trained", [])
    untrained = [n for n in data["costs"] if n not in ("original", "slimmed", *trained)]
    lines.append("")
    if trained:
        lines.append(
            f"Trained reference networks (from weights files; top-1 on the same test split): {', '.join(trained)}."
        )
    if untrained:
        lines.append(
            f"Reference networks with random weights (latency only, accuracy not measured): {', '.join(untrained)}."
        )
    if data["references_skipped"]:
        lines.append(
            f"Not measured (input {shape} too small for them): {', '.join(data['references_skipped'])}."
        )
    lines.append("")
    lines += [
        "## Plan applied",
        "",
        "| merge | kind | type | MACs saved (M) | status |",
        "|---|---|---|---:|---|",
    ]
    for e in data["plan"]:
        lines.append(
            f"| {e['id']} | {e['kind']} | {'exact' if e['exact'] else 'learned'} | {e['macs_saved'] / 1e6:.1f} | {e['status']} |"
        )
    if data.get("selection"):
        lines += _selection_lines(data["selection"])
    lines += ["", "## Energy", "", data["energy_note"]]
    if data["energy_mj"]:
        lines += [
            "",
            f"Original: {data['energy_mj']['original']:.1f} mJ, slimmed: {data['energy_mj']['slimmed']:.1f} mJ per inference (PyTorch eager).",
        ]
    return atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
