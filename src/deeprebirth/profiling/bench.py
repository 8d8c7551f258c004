"""Two models side by side: interleaved runs in one process, medians, memory, costs."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import DeepRebirthError
from ..export.executorch import PteModel, set_threads
from ..export.int8 import int8_to_time
from ..export.onnx import to_onnx
from ..export.onnx_file import OnnxModel
from ..graph.capture import capture, example_input
from ..machine import machine_info
from .executorch_runtime import et_runners
from .ort_runtime import ort_runner, ort_session
from .profile import RUNTIMES
from .stats import count_macs, count_params, peak_activation_bytes
from .timing import IN_A_ROW, Timing, measure_interleaved, pin_threads, restores_threads


@restores_threads
def latencies(
    models: dict[str, tuple[nn.Module, torch.Tensor]],
    *,
    runtimes: Sequence[str] = ("torch", "ort"),
    threads: int = 1,
    runs: int = 30,
    warmup: int = 5,
    sessions: int = 1,
    beside: str | Mapping[str, str] | None = None,
    in_a_row: int = IN_A_ROW,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict[str, Timing]]:
    """Latency of several models, each with its input, measured interleaved per runtime.

    Runtimes (:data:`RUNTIMES`): ``torch`` (PyTorch eager), ``ort`` (ONNX Runtime),
    ``ort-int8`` (ONNX Runtime, each model quantized to int8 as ``export --int8`` does, its
    ranges calibrated on a random input: :func:`~deeprebirth.export.int8.int8_to_time`),
    ``executorch`` (ExecuTorch with XNNPACK, batch 1). An exported file runs as it is in its own runtime only: an
    :class:`OnnxModel` in ONNX Runtime, a ``PteModel`` in ExecuTorch.

    ``sessions``: in ONNX Runtime and ExecuTorch, each model runs in that many separate
    sessions (``runs`` each, all interleaved) and reports the median of their medians. Two
    sessions of the same model differ by a few percent (measured: ONNX Runtime at 64x64, +-3%),
    more than many of the differences a speed table is read for.

    ``beside``: a key of ``models``; each other model is timed interleaved with that one
    alone (in each session), not with all of them, and scaled by how that one moved in its
    pair, which leads every other session. Interleaving many models times each with its
    weights evicted from the caches by the others (MobileNetV2 at 64x64 in ONNX Runtime:
    0.63 ms alone, 1.18 ms among 21 others: benchmarks/results/interleave_cache.md); in
    pairs each runs about as it would deployed, and drift still cancels in the ratio to its neighbour. A mapping gives
    each model its own reference (a block beside the block it replaces): models it does not
    name are references, each reported as the median over its pairs; one no model is beside
    is timed alone, each of its sessions in turn among the pairs' (interleaved with each other,
    its sessions would evict each other's weights: GoogLeNet at 64x64 in ONNX Runtime 4.36 ms
    so, 3.46 ms alone).

    ``in_a_row``: each turn of a model is that many runs back to back, the first untimed
    (:func:`~deeprebirth.profiling.timing.measure_interleaved`); 1: one run per turn.
    """
    if isinstance(beside, str):
        beside = {k: beside for k in models if k != beside}
    if beside is not None:
        unknown = sorted({*beside, *beside.values()} - set(models))
        if unknown:
            raise DeepRebirthError(f"beside: {unknown[0]!r} is not one of the models")
        chained = sorted(set(beside.values()) & set(beside))
        if chained:
            raise DeepRebirthError(f"beside: {chained[0]!r} is a reference beside another")
    if sessions < 1:
        raise DeepRebirthError(f"sessions must be at least 1, not {sessions}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise DeepRebirthError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}")
    for m, _ in models.values():
        own = {OnnxModel: "ort", PteModel: "executorch"}.get(type(m))
        if own is not None and any(r != own for r in runtimes):
            kind = "ONNX files" if own == "ort" else "ExecuTorch programs"
            raise DeepRebirthError(f"{kind} run only in {own} (--runtime {own})")
    pin_threads(threads)
    out: dict[str, dict[str, Timing]] = {}
    for runtime in runtimes:
        if runtime == "torch":
            log(f"PyTorch eager: {runs} interleaved runs of {len(models)} models")
            fns = {k: [lambda m=m, x=x: m(x)] for k, (m, x) in models.items()}
            with torch.inference_mode():
                out[runtime] = _measure_sessions(fns, runs, warmup, beside, in_a_row)
        elif runtime == "executorch":
            set_threads(threads)
            log(f"ExecuTorch: lowering {len(models)} models to XNNPACK")
            calls = {k: et_runners(m, x, sessions) for k, (m, x) in models.items()}
            log(f"ExecuTorch: {runs} interleaved runs" + _of_sessions(sessions))
            out[runtime] = _measure_sessions(calls, runs, warmup, beside, in_a_row)
        else:
            int8 = runtime == "ort-int8"
            how = " in int8 (QDQ, ranges from a random input)" if int8 else ""
            log(f"ONNX Runtime: preparing {len(models)} models{how}")
            calls = {}
            for k, (m, x) in models.items():
                proto = m.proto if isinstance(m, OnnxModel) else to_onnx(m, x)
                if int8:
                    proto = int8_to_time(proto, x.numpy())
                calls[k] = [
                    ort_runner(ort_session(proto, threads), x.numpy()) for _ in range(sessions)
                ]
            log(f"ONNX Runtime: {runs} interleaved runs" + _of_sessions(sessions))
            out[runtime] = _measure_sessions(calls, runs, warmup, beside, in_a_row)
    return out


def _of_sessions(sessions: int) -> str:
    return f" in each of {sessions} sessions per model" if sessions > 1 else ""


def _measure_sessions(
    calls: dict[str, list[Callable[[], object]]],
    runs: int,
    warmup: int,
    beside: Mapping[str, str] | None = None,
    in_a_row: int = IN_A_ROW,
) -> dict[str, Timing]:
    """Every session of every model interleaved; per model, the median of its sessions.
    With ``beside`` (model -> its reference): each session of each model interleaved with
    its reference's session of the same index alone, scaled by (the reference's median over
    all its pairs / the reference's in the pair)."""
    if beside is None:
        flat = {(k, i): fn for k, each in calls.items() for i, fn in enumerate(each)}
        t = measure_interleaved(flat, runs, warmup, in_a_row)
        return {
            k: Timing.of_sessions([t[k, i] for i in range(len(each))]) for k, each in calls.items()
        }
    refs = [k for k in calls if k not in beside]
    lone = [r for r in refs if r not in beside.values()]
    pairs: dict[str, list[tuple[Timing, Timing]]] = {k: [] for k in beside}
    alone: dict[str, list[Timing]] = {r: [] for r in lone}
    sessions = len(next(iter(calls.values())))
    for i in range(sessions):  # session i of every pair, then session i+1: drift is shared
        for k, ref in beside.items():
            pair = [("ref", calls[ref][i]), ("model", calls[k][i])]
            if i % 2:  # the reference leads every other session: neither always goes first
                pair.reverse()
            t = measure_interleaved(dict(pair), runs, warmup, in_a_row)
            pairs[k].append((t["ref"], t["model"]))
        for r in lone:  # nothing beside it: alone (not beside its own other sessions)
            alone[r].append(measure_interleaved({0: calls[r][i]}, runs, warmup, in_a_row)[0])
    out = {r: Timing.of_sessions(each) for r, each in alone.items()}
    for ref in refs:
        own = [r for k, each in pairs.items() if beside[k] == ref for r, _ in each]
        if own:
            mid = statistics.median(r.median_ms for r in own)
            out[ref] = Timing(mid, *(statistics.median(x) for x in _spread(own)), len(own) * runs)
    for k, each in pairs.items():
        mid = out[beside[k]].median_ms
        out[k] = Timing.of_sessions([_scaled(t, mid / r.median_ms) for r, t in each])
    return out


def _spread(timings: list[Timing]) -> tuple[list[float], list[float]]:
    return [t.p10_ms for t in timings], [t.p90_ms for t in timings]


def _scaled(t: Timing, factor: float) -> Timing:
    return Timing(t.median_ms * factor, t.p10_ms * factor, t.p90_ms * factor, t.runs)


def costs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict:
    """Peak activation memory, MACs and parameters of two PyTorch models (None for files)."""
    if any(isinstance(m, (OnnxModel, PteModel)) for m in (a, b)):
        return {"memory": None, "macs": None, "params": None}
    mem = {k: peak_activation_bytes(capture(m), x) / 2**20 for k, m in (("a", a), ("b", b))}
    macs = {k: count_macs(m, x) for k, m in (("a", a), ("b", b))}
    params = {k: count_params(m) for k, m in (("a", a), ("b", b))}
    return {
        "memory": {"a_mb": mem["a"], "b_mb": mem["b"], "ratio": mem["a"] / mem["b"]},
        "macs": {"a": macs["a"], "b": macs["b"], "ratio": macs["a"] / macs["b"]},
        "params": {"a": params["a"], "b": params["b"]},
    }


def bench(
    a: nn.Module,
    b: nn.Module,
    *,
    input_shape: Sequence[int],
    runtimes: Sequence[str] = ("torch", "ort"),
    threads: int = 1,
    runs: int = 30,
    warmup: int = 5,
    labels: tuple[str, str] = ("a", "b"),
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Latency of ``a`` and ``b`` measured interleaved (speedup = a_ms / b_ms), plus memory.

    ``a`` or ``b`` may be an :class:`OnnxModel` (ONNX Runtime only; no memory or MACs).

    Example:
        >>> from deeprebirth import get_model
        >>> r = bench(get_model("resnet18"), get_model("squeezenet1_1"), input_shape=(1, 3, 64, 64))  # doctest: +SKIP
        >>> r["runtimes"]["torch"]["speedup"]  # doctest: +SKIP
    """
    a, b = a.eval(), b.eval()
    x = example_input(input_shape[0], input_shape[1], input_shape[2])
    timings = latencies(
        {"a": (a, x), "b": (b, x)},
        runtimes=runtimes,
        threads=threads,
        runs=runs,
        warmup=warmup,
        log=log,
    )
    result: dict = {
        "a": labels[0],
        "b": labels[1],
        "input_shape": list(x.shape),
        "threads": threads,
        "runs": runs,
    }
    result["runtimes"] = {
        runtime: {
            "a_ms": t["a"].median_ms,
            "b_ms": t["b"].median_ms,
            "speedup": t["a"].median_ms / t["b"].median_ms,
            "a": t["a"].to_dict(),
            "b": t["b"].to_dict(),
        }
        for runtime, t in timings.items()
    }
    result.update(costs(a, b, x))
    result["machine"] = machine_info()
    return result
