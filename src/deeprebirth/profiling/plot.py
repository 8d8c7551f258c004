"""Charts of where the time goes (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..graph.taxonomy import KINDS, is_tensor_kind  # noqa: E402

RUNTIME_LABELS = {
    "torch": "PyTorch eager",
    "ort": "ONNX Runtime",
    "ort-int8": "ONNX Runtime int8",
    "executorch": "ExecuTorch (XNNPACK)",
}


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write as PNG (creating the directory) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_profile(result: dict, path: str | Path) -> Path:
    """Bar chart of the time per layer kind, one panel per runtime; tensor kinds in blue."""
    runtimes = result["runtimes"]
    fig, axes = plt.subplots(1, len(runtimes), figsize=(5.5 * len(runtimes), 4), squeeze=False)
    for ax, (runtime, data) in zip(axes[0], runtimes.items(), strict=True):
        kinds = [k for k in KINDS if k in data["by_kind"]]
        ms = [data["by_kind"][k]["ms"] for k in kinds]
        colors = ["tab:blue" if is_tensor_kind(k) else "tab:orange" for k in kinds]
        ax.barh(kinds[::-1], ms[::-1], color=colors[::-1])
        for y, (k, v) in enumerate(zip(kinds[::-1], ms[::-1], strict=True)):
            ax.text(v, y, f" {100 * data['by_kind'][k]['share']:.0f}%", va="center", fontsize=8)
        ax.set_xlabel("time per inference (ms, sum of layers)")
        ax.set_title(
            f"{RUNTIME_LABELS.get(runtime, runtime)}: {data['latency_ms']:.1f} ms, "
            f"non-tensor {100 * data['non_tensor_share']:.0f}%",
            fontsize=10,
        )
    shape = "x".join(str(s) for s in result["input_shape"])
    fig.suptitle(f"{result['model']} ({shape}, {result['threads']} thread(s)); orange = non-tensor")
    return save_figure(fig, path)
