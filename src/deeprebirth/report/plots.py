"""The report's charts: time per layer kind before/after, and accuracy against latency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..graph.taxonomy import KINDS  # noqa: E402
from ..profiling.plot import RUNTIME_LABELS, save_figure  # noqa: E402


def plot_kinds_before_after(before: dict, after: dict, path: str | Path) -> Path:
    """Stacked bars of ms per layer kind, original vs slimmed, one panel per runtime."""
    runtimes = list(before["runtimes"])
    fig, axes = plt.subplots(1, len(runtimes), figsize=(5 * len(runtimes), 4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, runtime in zip(axes[0], runtimes, strict=True):
        sides = {"original": before["runtimes"][runtime], "slimmed": after["runtimes"][runtime]}
        bottoms = [0.0, 0.0]
        for i, kind in enumerate(KINDS):
            ms = [d["by_kind"].get(kind, {}).get("ms", 0.0) for d in sides.values()]
            if any(ms):
                ax.bar(list(sides), ms, bottom=bottoms, label=kind, color=cmap(i))
                bottoms = [b + m for b, m in zip(bottoms, ms, strict=True)]
        ax.set_title(RUNTIME_LABELS.get(runtime, runtime))
        ax.set_ylabel("ms per inference (sum of layers)")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.suptitle("time per layer kind, before and after slimming")
    return save_figure(fig, path, dpi=110)


def plot_accuracy_latency(points: list[dict], path: str | Path, runtime: str = "ort") -> Path:
    """Top-1 against latency; networks without a measured accuracy are drawn as dashed lines.

    ``points``: ``{"name", "latency_ms", "top1" (fraction or None)}``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        if p.get("top1") is None:
            ax.axvline(p["latency_ms"], ls="--", color="gray", lw=1)
            ax.annotate(
                f"{p['name']}\n(accuracy not measured)",
                (p["latency_ms"], 0.02),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="bottom",
            )
        else:
            ax.scatter(p["latency_ms"], 100 * p["top1"], s=40)
            ax.annotate(
                p["name"],
                (p["latency_ms"], 100 * p["top1"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xlabel(f"{RUNTIME_LABELS.get(runtime, runtime)} latency (ms, median)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy vs latency")
    return save_figure(fig, path, dpi=110)
