"""ONNX Runtime: whole-model latency and time per node from ORT's own profiler."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort

from ..export.onnx_file import ort_session
from ..graph.taxonomy import onnx_kind
from .timing import Timing, measure


def ort_runner(session: ort.InferenceSession, example: np.ndarray):
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: example})


def ort_latency(
    proto: onnx.ModelProto, example: np.ndarray, threads: int, runs: int, warmup: int
) -> Timing:
    return measure(ort_runner(ort_session(proto, threads), example), runs, warmup)


def ort_layer_times(
    proto: onnx.ModelProto, example: np.ndarray, threads: int, runs: int, warmup: int
) -> list[dict]:
    """Median kernel time of each node (after ORT's graph optimisations) over ``runs`` runs.

    Returns one row per executed node, in execution order: ``{"name", "kind", "op", "ms"}``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(proto, threads, profile_dir=tmp)
        run = ort_runner(session, example)
        for _ in range(warmup + runs):
            run()
        with open(session.end_profiling()) as f:
            events = json.load(f)
    samples: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for ev in events:
        name = ev.get("name", "")
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        samples[node].append(ev["dur"] / 1e3)  # microseconds -> ms
        ops[node] = ev.get("args", {}).get("op_name", "?")
    rows = []
    for node, durs in samples.items():
        timed = durs[warmup:] if len(durs) > warmup else durs
        rows.append(
            {
                "name": node,
                "kind": onnx_kind(ops[node]),
                "op": ops[node],
                "ms": statistics.median(timed),
            }
        )
    return rows
