"""ONNX export that keeps layers as deployed runtimes run them (LRN as one node)."""

from __future__ import annotations

import copy
import functools
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

try:  # the exporter's own export, to give it a registry built once (see _export)
    from torch.onnx._internal.exporter import _core, _dynamic_shapes, _registration
except ImportError:  # another torch: the public call
    _core = _dynamic_shapes = _registration = None

from ..errors import DeepRebirthError
from ..zoo.layers import ONNX_TRANSLATIONS, LocalResponseNorm
from .rewrite import activations_before_splits

OPSET = 18


@functools.cache
def _registry():
    """torchlib's ONNX functions and ours (:data:`ONNX_TRANSLATIONS`), built once per
    process; None where torch's exporter does not have this internal API."""
    if _core is None:
        return None
    needed = (
        (_core, "export"),
        (_dynamic_shapes, "convert_str_to_export_dim"),
        (_registration.ONNXRegistry, "from_torchlib"),
    )
    if not all(hasattr(where, name) for where, name in needed):
        return None
    registry = _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)
    for op, function in ONNX_TRANSLATIONS.items():
        registry.register_op(op, function, is_complex=False)
    return registry


def _export(model: nn.Module, args: tuple, *, dynamic_shapes, **kwargs):
    """``torch.onnx.export(..., dynamo=True)`` at :data:`OPSET` with our translations. The
    public call builds the registry of ONNX functions anew each time (29.6 s of a profiled
    ResNet-50 selection at 224x224; BVLC GoogLeNet at 64x64 exported in 1.75 s with it,
    1.14 s without), so the exporter's own ``export`` is given the registry built once
    (:func:`_registry`)."""
    registry = _registry()
    if registry is None:
        return torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            custom_translation_table=ONNX_TRANSLATIONS,
            verbose=False,
            dynamic_shapes=dynamic_shapes,
            **kwargs,
        )
    # as torch.onnx.export does it: named dims exported as dynamic, then renamed
    shapes, rename = _dynamic_shapes.convert_str_to_export_dim(dynamic_shapes)
    program = _core.export(
        model,
        args,
        registry=registry,
        dynamic_shapes=shapes,
        opset_version=OPSET,
        verbose=False,
        **kwargs,
    )
    if rename:
        program._rename_dynamic_axes(dynamic_shapes)
    return program


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
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension; activations after
    a channel split are computed before it (:mod:`.rewrite`).

    Returns the checked ``ModelProto``; also writes it to ``path`` when given.
    """
    model = _with_native_lrn(activations_before_splits(model)).eval()
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports progress on stdout and warns about things we handle.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = _export(
                model,
                (example,),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},) if example.shape[0] > 1 else None,
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
