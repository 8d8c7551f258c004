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


def pareto_front(points: list[dict]) -> list[dict]:
    """The measured points no other point beats on both latency and top-1, fastest first."""
    measured = sorted(
        (p for p in points if p.get("top1") is not None),
        key=lambda p: (p["latency_ms"], -p["top1"]),
    )
    front, best = [], float("-inf")
    for p in measured:
        if p["top1"] > best:
            front.append(p)
            best = p["top1"]
    return front


def plot_accuracy_latency(points: list[dict], path: str | Path, runtime: str = "ort") -> Path:
    """Top-1 against latency, the Pareto front drawn as a line; networks without a measured
    accuracy are dashed vertical lines. Names go in the legend (labels beside the points
    overlap when networks are close), each point with its own colour and marker.

    ``points``: ``{"name", "latency_ms", "top1" (fraction or None)}``.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap, markers = plt.get_cmap("tab10"), "osD^vP*Xh<>p"
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot(
            [p["latency_ms"] for p in front],
            [100 * p["top1"] for p in front],
            color="lightgray",
            lw=2,
            zorder=0,
            drawstyle="steps-post",
            label="Pareto front",
        )
    for i, p in enumerate(points):
        style = {"color": cmap(i % 10), "label": p["name"]}
        if p.get("top1") is None:
            style["label"] += " (accuracy not measured)"
            ax.axvline(p["latency_ms"], ls="--", lw=1, **style)
        else:
            ax.scatter(
                p["latency_ms"],
                100 * p["top1"],
                s=50,
                marker=markers[i % len(markers)],
                edgecolors="black" if p in front else "none",
                **style,
            )
    ax.set_xlabel(f"{RUNTIME_LABELS.get(runtime, runtime)} latency (ms, median)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy vs latency (outlined: on the Pareto front)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
