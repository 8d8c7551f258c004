"""Terminal tables (rich) for plans, latency-budget selections and side-by-side benches."""

from __future__ import annotations

from rich.table import Table

from ..planning.exact_timing import left_off_why
from ..profiling.plot import RUNTIME_LABELS


def _geometry(entry) -> str:
    g = entry.geometry
    if entry.kind == "fuse_parallel":
        return f"{'+'.join(map(str, g['out_channels']))} channels"
    if "stride" in g:
        return f"k{'x'.join(map(str, g['kernel']))} s{g['stride'][0]} p{g['padding'][0]}"
    if "heads" in g:
        return f"{len(g['heads'])} heads at stride {next(iter(g['heads'].values()))['stride'][0]}"
    return ""


def plan_table(plan) -> Table:
    shape = "x".join(map(str, plan.input_shape))
    table = Table(title=f"plan for {plan.model} at {shape}: {len(plan.entries)} merges")
    measured = any(e.latency_saved_ms is not None for e in plan.entries)
    cols = ("#", "merge", "type", "layers", "new geometry", "MACs saved")
    for col in (*cols, *(("ms saved",) if measured else ()), "on"):
        table.add_column(col, justify="right" if col in ("#", "MACs saved", "ms saved") else "left")
    for i, e in enumerate(plan.entries):
        layers = ", ".join(e.nodes) if len(e.nodes) <= 3 else f"{e.nodes[0]} (+{len(e.nodes) - 1})"
        table.add_row(
            str(i),
            e.kind,
            "exact" if e.exact else "learned",
            layers,
            _geometry(e),
            f"{e.macs_saved / 1e6:.1f} M",
            *(
                ()
                if not measured
                else ("-" if e.latency_saved_ms is None else f"{e.latency_saved_ms:.3f}",)
            ),
            "yes" if e.enabled else "no",
        )
    notes = [f"{i}: {left_off_why(e)}" for i, e in enumerate(plan.entries) if left_off_why(e)]
    if notes:
        table.caption = "\n".join(notes)
    return table


def selection_table(selection, budget_ms: float, runtime: str) -> Table:
    table = Table(title=f"selected for {budget_ms:.2f} ms on {runtime}")
    for col in ("option", "saves ms", "error"):
        table.add_column(col, justify="left" if col == "option" else "right")
    for o in selection.options:
        if o.key in selection.chosen:
            table.add_row(o.key, f"{o.saving_ms:.2f}", f"{o.cost:.2e}")
    return table


def selection_summary(selection) -> str:
    x = selection.extra
    predicted = x.get("blocks_ms", selection.predicted_ms)
    return (
        f"predicted {predicted:.2f} ms, measured {x['measured_ms']:.2f} ms "
        f"= {x['measured_ms'] / x['original_ms']:.2f} of the original's {x['original_ms']:.2f} ms "
        f"(every merge {x['fixed_plan_ms']:.2f} ms); "
        f"output error {x['error']:.2e} vs {x['fixed_plan_error']:.2e} with every merge"
    )


def bench_table(r: dict, a: str, b: str, shape, threads: int, runs: int) -> Table:
    table = Table(
        title=f"A = {a}   B = {b}   ({'x'.join(map(str, shape))}, {threads} thread(s), "
        f"{runs} interleaved runs)"
    )
    for col in ("", "A", "B", "A / B"):
        table.add_column(col, justify="left" if not col else "right")
    for runtime, d in r["runtimes"].items():
        table.add_row(
            f"{RUNTIME_LABELS.get(runtime, runtime)} ms (median)",
            f"{d['a_ms']:.2f}",
            f"{d['b_ms']:.2f}",
            f"{d['speedup']:.2f}x",
        )
    m = r["memory"]
    if m is not None:  # not known for ONNX files
        table.add_row(
            "peak activations MB", f"{m['a_mb']:.2f}", f"{m['b_mb']:.2f}", f"{m['ratio']:.2f}x"
        )
        macs = r["macs"]
        table.add_row(
            "GMACs", f"{macs['a'] / 1e9:.3f}", f"{macs['b'] / 1e9:.3f}", f"{macs['ratio']:.2f}x"
        )
        table.add_row(
            "params M", f"{r['params']['a'] / 1e6:.2f}", f"{r['params']['b'] / 1e6:.2f}", ""
        )
    return table
