"""ONNX export that keeps layers as deployed runtimes run them (LRN as one node)."""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import DeepRebirthError
from ..zoo.layers import ONNX_TRANSLATIONS, LocalResponseNorm

OPSET = 18


def _with_native_lrn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose plain ``nn.LocalResponseNorm`` layers export as one LRN node."""
    if not any(type(m) is nn.LocalResponseNorm for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is nn.LocalResponseNorm:
            m.__class__ = LocalResponseNorm  # same attributes, same function
    return model


def to_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path | None = None
) -> onnx.ModelProto:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension.

    Returns the checked ``ModelProto``; also writes it to ``path`` when given.
    """
    model = _with_native_lrn(model).eval()
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports progress on stdout and warns about things we handle.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                external_data=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},) if example.shape[0] > 1 else None,
                custom_translation_table=ONNX_TRANSLATIONS,
                verbose=False,
            )
    except Exception as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepRebirthError(f"ONNX export of {type(model).__name__} failed: {cause}") from e
    proto = program.model_proto
    onnx.checker.check_model(proto)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto
