"""Timing in ExecuTorch (XNNPACK delegate), the runtime PyTorch ships for phones."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def et_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A call running ``model`` once on ``x`` (batch 1) in ExecuTorch: a :class:`PteModel`
    as it is, a PyTorch model lowered first. Size the pool (``set_threads``) before."""
    from ..export.executorch import PteModel, to_executorch

    x = x[:1].contiguous()
    if not isinstance(model, PteModel):
        from executorch.runtime import Runtime

        program, _ = to_executorch(model, x)
        loaded = Runtime.get().load_program(program)
        method = loaded.load_method("forward")
        # A method does not keep its program alive: the closure holds both.
        return lambda: (loaded, method.execute([x]))[1]
    return lambda: model.method.execute([x])
