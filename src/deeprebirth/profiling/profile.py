"""Where inference time goes, per layer and per layer kind, in each runtime."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import DeepRebirthError
from ..export.executorch import set_threads
from ..export.int8 import int8_to_time
from ..export.onnx import to_onnx
from ..graph.capture import capture, example_input
from ..graph.taxonomy import KINDS, is_tensor_kind
from ..machine import machine_info
from ..zoo import get_model, model_meta
from .executorch_runtime import et_latency, et_layer_times
from .ort_runtime import ort_latency, ort_layer_times
from .stats import count_macs, count_params, peak_activation_bytes
from .timing import pin_threads, restores_threads
from .torch_runtime import torch_latency, torch_layer_times

#: Runtimes with per-layer profiles and timing: PyTorch eager, ONNX Runtime in float and in
#: int8 (the model quantized as ``export --int8`` writes it, ranges from a random input:
#: :func:`~deeprebirth.export.int8.int8_to_time`), ExecuTorch with XNNPACK (the ``mobile``
#: extra). ``profile`` defaults to the first two.
RUNTIMES = ("torch", "ort", "ort-int8", "executorch")
DEFAULT_RUNTIMES = ("torch", "ort")


def check_forward(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """Fail early, in one line, when the model does not take this input."""
    try:
        with torch.inference_mode():
            model(x)
    except RuntimeError as e:
        cause = str(e).strip().splitlines()[0]
        shape = "x".join(map(str, x.shape))
        raise DeepRebirthError(f"{name} does not accept input {shape}: {cause}") from e


def summarize_layers(rows: list[dict]) -> dict:
    """Per-kind time and share of the summed layer times, plus the non-tensor share."""
    total = sum(r["ms"] for r in rows) or 1.0
    by_kind: dict[str, float] = defaultdict(float)
    for r in rows:
        by_kind[r["kind"]] += r["ms"]
    ordered = {k: by_kind[k] for k in KINDS if k in by_kind}
    return {
        "layer_sum_ms": total,
        "non_tensor_share": sum(ms for k, ms in ordered.items() if not is_tensor_kind(k)) / total,
        "by_kind": {k: {"ms": ms, "share": ms / total} for k, ms in ordered.items()},
    }


@restores_threads
def profile(
    model: nn.Module,
    *,
    name: str = "model",
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    threads: int = 1,
    batch: int = 1,
    input_size: int = 224,
    in_chans: int = 3,
    runs: int = 30,
    warmup: int = 5,
    layer_runs: int = 10,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Profile ``model`` in each runtime: latency, time per layer and kind, static costs.

    Example:
        >>> from deeprebirth import get_model, profile
        >>> result = profile(get_model("bvlc_googlenet"), runtimes=["torch"], input_size=64)
        >>> result["runtimes"]["torch"]["non_tensor_share"]  # doctest: +SKIP
        0.55
    """
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtime(s) {sorted(unknown)}; choose from {list(RUNTIMES)}")
    if "executorch" in runtimes and batch != 1:
        raise ValueError("ExecuTorch programs run batch 1: profile with batch=1")
    pin_threads(threads)
    model = model.eval()
    x = example_input(batch, in_chans, input_size)
    check_forward(model, x, name)
    gm = capture(model)
    log("counting MACs, parameters and peak activation memory")
    result: dict = {
        "model": name,
        "input_shape": list(x.shape),
        "threads": threads,
        "macs": count_macs(model, x),
        "params": count_params(model),
        "peak_activation_mb": peak_activation_bytes(gm, x) / 2**20,
        "machine": machine_info(),
        "runtimes": {},
    }
    for runtime in runtimes:
        if runtime == "torch":
            log(f"PyTorch eager: {runs} timed runs, then {layer_runs} layer-by-layer runs")
            latency = torch_latency(model, x, runs, warmup)
            rows = torch_layer_times(gm, x, layer_runs, warmup=2)
        elif runtime == "executorch":
            set_threads(threads)
            log(f"ExecuTorch: lowering to XNNPACK, {runs} timed runs, {layer_runs} profiled runs")
            latency = et_latency(model, x, runs, warmup)
            rows = et_layer_times(model, x, layer_runs, warmup=2)
        else:
            log(
                "ONNX Runtime: exporting"
                + (", quantizing to int8" if runtime == "ort-int8" else "")
            )
            proto = to_onnx(model, x)
            if runtime == "ort-int8":
                proto = int8_to_time(proto, x.numpy())
            log(f"ONNX Runtime: {runs} timed runs, then {layer_runs} profiled runs")
            latency = ort_latency(proto, x.numpy(), threads, runs, warmup)
            rows = ort_layer_times(proto, x.numpy(), threads, layer_runs, warmup=2)
        result["runtimes"][runtime] = {
            "latency_ms": latency.median_ms,
            "latency": latency.to_dict(),
            **summarize_layers(rows),
            "layers": rows,
        }
    return result


def profile_by_name(name: str, **kwargs) -> dict:
    """Convenience: ``profile(get_model(name), name=name, ...)`` with the model's input size."""

    meta = model_meta(name)
    kwargs.setdefault("input_size", meta["input_size"])
    kwargs.setdefault("in_chans", meta["in_chans"])
    return profile(get_model(name), name=name, **kwargs)
