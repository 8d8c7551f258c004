"""ExecuTorch (XNNPACK delegate), the runtime PyTorch ships for phones: whole-model latency
and time per operator from the runtime's own profiler (ETDump, read by the Inspector).
ExecuTorch is optional: its modules are imported inside the functions that use them."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..export.executorch import PteModel, to_executorch
from ..graph.taxonomy import XNNPACK_SPANS, executorch_kind, xnnpack_op
from .timing import Timing, measure

#: ETDump events of the runtime itself, not of an operator.
_FRAMEWORK_EVENTS = ("DELEGATE_CALL", "OPERATOR_CALL")


def _program(model: nn.Module, x: torch.Tensor) -> bytes | Path:
    """What the runtime loads: a :class:`PteModel`'s file, or ``model`` lowered for XNNPACK."""

    if isinstance(model, PteModel):
        return model.path
    return to_executorch(model, x[:1].contiguous())[0]


def et_runners(model: nn.Module, x: torch.Tensor, sessions: int = 1) -> list[Callable[[], object]]:
    """Calls running ``model`` once on ``x`` (batch 1) in ExecuTorch, one per ``sessions``
    (the program loaded that many times): a :class:`PteModel` as it is, a PyTorch model
    lowered first (once). Size the pool (``set_threads``) before."""
    from executorch.runtime import Runtime

    x = x[:1].contiguous()
    program = _program(model, x)
    calls = []
    for _ in range(sessions):
        loaded = Runtime.get().load_program(program)
        method = loaded.load_method("forward")
        # A method does not keep its program alive: the closure holds both.
        calls.append(lambda loaded=loaded, method=method: (loaded, method.execute([x]))[1])
    return calls


def et_latency(model: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> Timing:
    return measure(et_runners(model, x)[0], runs, warmup)


def et_layer_times(
    model: nn.Module, x: torch.Tensor, runs: int, warmup: int, debug_buffer_mb: int = 16
) -> list[dict]:
    """Median time of each operator the runtime ran over ``runs`` runs, from its ETDump.

    XNNPACK reports its own operators (``Convolution (NHWC, F32) IGEMM #3``); ops that fell
    back to the portable kernels come as ``native_call_<op>.out``. Kinds follow
    :func:`~deeprebirth.graph.taxonomy.executorch_kind`, and a run of operators one source
    layer became (``XNNPACK_SPANS``: LRN's Square ... Divide) takes that layer's kind.

    Returns one row per operator, in execution order: ``{"name", "kind", "op", "ms"}``.
    """
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    x = x[:1].contiguous()
    program = Runtime.get().load_program(
        _program(model, x), enable_etdump=True, debug_buffer_size=debug_buffer_mb << 20
    )
    method = program.load_method("forward")
    for _ in range(warmup + runs):
        method.execute([x])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "etdump.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        inspector = Inspector(etdump_path=str(etdump))
    rows = []
    for block in inspector.event_blocks:
        for ev in block.events:
            if ev.perf_data is None or "::" in ev.name or ev.name in _FRAMEWORK_EVENTS:
                continue
            raw = list(ev.perf_data.raw)
            timed = raw[warmup:] if len(raw) > warmup else raw
            delegated = bool(ev.is_delegated_op)
            rows.append(
                {
                    "name": ev.name,
                    "kind": executorch_kind(ev.name, delegated),
                    "op": xnnpack_op(ev.name) if delegated else ev.name,
                    "ms": statistics.median(timed),
                }
            )
    return _spans_to_layers(rows)


def _spans_to_layers(rows: list[dict]) -> list[dict]:
    """Give each run of operators that one source layer became (XNNPACK_SPANS) its kind."""
    out, i = [], 0
    while i < len(rows):
        kind = None
        for (first, last), (span_kind, between) in XNNPACK_SPANS.items():
            if rows[i]["op"] != first:
                continue
            end = i + 1
            while end < len(rows) and rows[end]["op"] in between:
                end += 1
            if end < len(rows) and rows[end]["op"] == last:
                kind = span_kind
                break
        if kind is None:
            out.append(rows[i])
            i += 1
            continue
        out += [{**r, "kind": kind} for r in rows[i : end + 1]]
        i = end + 1
    return out
