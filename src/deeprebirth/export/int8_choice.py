"""int8 settings chosen on held-out images: one model per calibration method, the best kept.

No calibration method wins on every model: clipping outliers (``percentile``) helps where
a few extreme activations stretch the ranges and hurts where those extremes matter. So each
candidate is quantized, run in ONNX Runtime on labelled validation images (never the
calibration ones) and judged by its top-1 there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import DeepRebirthError
from ..files import publish
from .int8 import (
    CALIBRATION_METHODS,
    DEFAULT_INT8_FORMAT,
    needs_reduce_range,
    quantize_int8,
)
from .onnx_file import OnnxModel


def _top1(model: OnnxModel, batches: Sequence[tuple]) -> float:
    hits = n = 0
    for images, labels in batches:
        predicted = model(torch.as_tensor(np.asarray(images, np.float32))).argmax(1)
        labels = torch.as_tensor(np.asarray(labels)).long()
        hits += (predicted == labels).sum().item()
        n += len(labels)
    return hits / n


def choose_int8(
    model: onnx.ModelProto | str | Path,
    out: str | Path,
    calibration_batches: Iterable,
    val_batches: Iterable[tuple],
    methods: Sequence[str] = tuple(CALIBRATION_METHODS),
    fmt: str = DEFAULT_INT8_FORMAT,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    threads: int = 1,
    **options,
) -> dict:
    """Quantize ``model`` with each calibration method and write the most accurate to ``out``.

    Args:
        model: the float model (a ModelProto or a path to an ``.onnx`` file).
        out: where the chosen int8 model is written (atomically).
        calibration_batches: input images (arrays or tensors, NCHW), e.g. training images;
            every method calibrates on the same ones.
        val_batches: ``(images, labels)`` pairs the candidates are judged on: a validation
            split, so that the choice is not fitted to the calibration images.
        methods: the calibration methods tried (:data:`~.int8.CALIBRATION_METHODS`); on a
            tie the first one listed wins, so put the cheapest or most trusted first.
        reduce_range: None detects it (:func:`~.int8.needs_reduce_range`).
        threads: ONNX Runtime threads for the validation runs.
        options: passed on to :func:`~.int8.quantize_int8` (and on to ORT).

    Returns:
        ``{"top1": {method: accuracy}, "method": chosen, "reduce_range": bool, "format":
        fmt, "n": validation images, "path": str(out)}``.
    """
    methods = list(dict.fromkeys(methods))
    choices = ", ".join(CALIBRATION_METHODS)
    if not methods:
        raise DeepRebirthError(
            f"no int8 calibration methods to choose from; give some of {choices}"
        )
    for method in methods:
        if method not in CALIBRATION_METHODS:
            raise DeepRebirthError(
                f"unknown int8 calibration method {method!r}; choose from {choices}"
            )
    if reduce_range is None:
        reduce_range = needs_reduce_range()
    calibration = [np.asarray(b, np.float32) for b in calibration_batches]
    val = list(val_batches)
    n = sum(len(labels) for _, labels in val)
    if n == 0:
        raise DeepRebirthError("choosing int8 settings needs validation images; none given")
    out = Path(out)
    top1: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            path = quantize_int8(
                model,
                Path(tmp) / f"{method}.onnx",
                calibration,
                fmt,
                per_channel,
                reduce_range,
                calibration_method=method,
                **options,
            )
            top1[method] = _top1(OnnxModel(path, threads), val)
        best = max(methods, key=top1.__getitem__)  # the first of equals
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        staged.write_bytes((Path(tmp) / f"{best}.onnx").read_bytes())
        publish(staged, out)
    return {
        "top1": top1,
        "method": best,
        "reduce_range": reduce_range,
        "format": fmt,
        "n": n,
        "path": str(out),
    }
