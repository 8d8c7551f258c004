"""Terminal tables (rich) for profiles."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..graph.taxonomy import KINDS, is_tensor_kind
from .plot import RUNTIME_LABELS


def profile_tables(result: dict, top: int = 10) -> list[Table]:
    """A per-kind breakdown (all runtimes side by side) and the slowest layers per runtime."""
    runtimes = result["runtimes"]
    shape = "x".join(str(s) for s in result["input_shape"])
    kinds_table = Table(
        title=(
            f"{result['model']} — input {shape}, {result['threads']} thread(s), "
            f"{result['macs'] / 1e9:.2f} GMACs, {result['params'] / 1e6:.2f} M params, "
            f"peak activations {result['peak_activation_mb']:.1f} MB"
        )
    )
    kinds_table.add_column("layer kind")
    kinds_table.add_column("type")
    for runtime in runtimes:
        label = RUNTIME_LABELS.get(runtime, runtime)
        kinds_table.add_column(f"{label} ms", justify="right")
        kinds_table.add_column("share", justify="right")
    present = [k for k in KINDS if any(k in d["by_kind"] for d in runtimes.values())]
    for kind in present:
        row = [kind, "tensor" if is_tensor_kind(kind) else "non-tensor"]
        for data in runtimes.values():
            entry = data["by_kind"].get(kind)
            row += [f"{entry['ms']:.2f}", f"{100 * entry['share']:.1f}%"] if entry else ["-", "-"]
        kinds_table.add_row(*row)
    total = ["non-tensor total", ""]
    latency = ["latency (median, p10-p90)", ""]
    for data in runtimes.values():
        nt_ms = sum(v["ms"] for k, v in data["by_kind"].items() if not is_tensor_kind(k))
        total += [f"{nt_ms:.2f}", f"{100 * data['non_tensor_share']:.1f}%"]
        t = data["latency"]
        latency += [f"{t['median_ms']:.2f}", f"{t['p10_ms']:.1f}-{t['p90_ms']:.1f}"]
    kinds_table.add_section()
    kinds_table.add_row(*total, style="bold")
    kinds_table.add_row(*latency, style="bold")
    tables = [kinds_table]
    for runtime, data in runtimes.items():
        layers = sorted(data["layers"], key=lambda r: r["ms"], reverse=True)[:top]
        t = Table(title=f"slowest {len(layers)} layers — {RUNTIME_LABELS.get(runtime, runtime)}")
        for col in ("layer", "op", "kind"):
            t.add_column(col)
        t.add_column("ms", justify="right")
        t.add_column("share", justify="right")
        total_ms = data["layer_sum_ms"]
        for r in layers:
            t.add_row(
                r["name"], r["op"], r["kind"], f"{r['ms']:.2f}", f"{100 * r['ms'] / total_ms:.1f}%"
            )
        tables.append(t)
    return tables


def print_profile(result: dict, console: Console | None = None, top: int = 10) -> None:
    console = console or Console()
    for table in profile_tables(result, top=top):
        console.print(table)
