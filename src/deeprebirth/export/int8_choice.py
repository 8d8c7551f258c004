"""int8 settings chosen on held-out images: one model per calibration method, the best kept,
then the layers that lose most kept in float while that buys accuracy back.

No calibration method wins on every model: clipping outliers (``percentile``) helps where
a few extreme activations stretch the ranges and hurts where those extremes matter. So each
candidate is quantized, run in ONNX Runtime on labelled validation images (never the
calibration ones) and judged by its top-1 there.

When the best still loses more than ``max_drop`` of the float model's top-1, the quantized
layers are ranked by how much quantization hurts them (:func:`sensitive_nodes`: the
signal-to-quantization-noise ratio of each one's input activation and weights, from ORT's
``qdq_loss_debug``, as NNCF's accuracy control and AIMET's quantization analyzer rank
layers), and the worst 1, 2, 4, ... are left in float (at most ``max_float_share`` of them)
until the loss is within ``max_drop``, or the most accurate of those tries is kept.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import DeepRebirthError
from ..files import publish
from .executorch import OBSERVERS, PteModel, to_executorch
from .int8 import (
    CALIBRATION_METHODS,
    DEFAULT_INT8_FORMAT,
    WEIGHTED_OPS,
    needs_reduce_range,
    prepare_for_int8,
    quantize_int8,
)
from .onnx import to_onnx
from .onnx_file import OnnxModel


def _top1(model: nn.Module, batches: Sequence[tuple]) -> float:
    hits = n = 0
    for images, labels in batches:
        with torch.no_grad():
            predicted = model(torch.as_tensor(np.asarray(images, np.float32))).argmax(1)
        labels = torch.as_tensor(np.asarray(labels)).long()
        hits += (predicted == labels).sum().item()
        n += len(labels)
    return hits / n


#: Largest top-1 loss (a fraction) against the float model before layers are kept in float.
MAX_DROP = 0.003
#: At most this share of the quantizable layers is kept in float.
MAX_FLOAT_SHARE = 0.25
#: Validation images the sensitivity analysis runs on.
SENSITIVITY_IMAGES = 64
DEQUANTIZED = "_DequantizeLinear_Output"


def sensitive_nodes(
    float_model: onnx.ModelProto | str | Path, int8_model: str | Path, images: np.ndarray
) -> list[tuple[str, float]]:
    """The int8 model's quantized layers (Conv, Gemm, MatMul), the most hurt first: each with
    the worse signal-to-quantization-noise ratio (dB) of its input activation and its
    weights, measured on ``images`` against the float model (ORT's ``qdq_loss_debug``)."""
    from onnxruntime.quantization import qdq_loss_debug as debug  # only this step uses it

    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_for_int8(float_model, Path(tmp) / "prepared.onnx")
        augmented = {}
        for key, path in (("float", prepared), ("int8", Path(int8_model))):
            augmented[key] = Path(tmp) / f"{key}_augmented.onnx"
            debug.modify_model_output_intermediate_tensors(path, augmented[key])
        name = onnx.load(str(prepared)).graph.input[0].name
        acts = {
            key: debug.collect_activations(str(path), _Images(name, images))
            for key, path in augmented.items()
        }
        errors = debug.compute_activation_error(
            debug.create_activation_matching(acts["int8"], acts["float"])
        )
        weights = debug.compute_weight_error(
            debug.create_weight_matching(str(prepared), str(int8_model))
        )
    ranked = []
    for node in onnx.load(str(int8_model)).graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        sqnr = []
        for i, tensor in enumerate(node.input[:2]):
            source = tensor.removesuffix(DEQUANTIZED)
            if i == 0 and source in errors:
                sqnr.append(errors[source]["qdq_err"])
            elif i == 1 and source in weights:
                sqnr.append(weights[source])
        if sqnr and node.name:
            ranked.append((node.name, float(min(sqnr))))
    return sorted(ranked, key=lambda item: item[1])


class _Images:
    """ORT's calibration reader over images, one at a time."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._it = iter([{input_name: img[None]} for img in images])

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):  # qdq_loss_debug iterates its reader
        return self._it


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
    max_drop: float | None = MAX_DROP,
    **options,
) -> dict:
    """Quantize ``model`` with each calibration method and write the most accurate to ``out``;
    then, if it loses more than ``max_drop`` of the float model's top-1, leave the layers that
    quantization hurts most in float while that brings top-1 back (module docstring).

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
        max_drop: the top-1 loss (a fraction) accepted before layers are kept in float;
            None keeps every layer int8.
        options: passed on to :func:`~.int8.quantize_int8` (and on to ORT).

    Returns:
        ``{"top1": {method: accuracy}, "method": chosen, "reduce_range": bool, "format":
        fmt, "n": validation images, "path": str(out), "float_top1": accuracy,
        "kept_float": [node names], "top1_kept_float": {count: accuracy}}``.
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
        chosen = Path(tmp) / f"{best}.onnx"
        kept = {"float_top1": None, "kept_float": [], "top1_kept_float": {}}
        if max_drop is not None:
            float_path = Path(tmp) / "float.onnx"
            onnx.save(
                model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)),
                str(float_path),
            )
            kept["float_top1"] = _top1(OnnxModel(float_path, threads), val)
            if top1[best] < kept["float_top1"] - max_drop:
                images = np.concatenate([np.asarray(x, np.float32) for x, _ in val])
                ranked = sensitive_nodes(float_path, chosen, images[:SENSITIVITY_IMAGES])
                accuracy, best_k, k = {0: top1[best]}, 0, 1
                while k <= max(1, int(MAX_FLOAT_SHARE * len(ranked))) and k <= len(ranked):
                    names = [name for name, _ in ranked[:k]]
                    path = quantize_int8(
                        float_path,
                        Path(tmp) / f"float_{k}.onnx",
                        calibration,
                        fmt,
                        per_channel,
                        reduce_range,
                        calibration_method=best,
                        nodes_to_exclude=names,
                        **options,
                    )
                    accuracy[k] = _top1(OnnxModel(path, threads), val)
                    if accuracy[k] > accuracy[best_k]:
                        best_k, chosen = k, path
                    if accuracy[k] >= kept["float_top1"] - max_drop:
                        break
                    k *= 2
                kept["kept_float"] = [name for name, _ in ranked[:best_k]]
                kept["top1_kept_float"] = accuracy
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        staged.write_bytes(chosen.read_bytes())
        publish(staged, out)
    return {
        "top1": top1,
        "method": best,
        "reduce_range": reduce_range,
        "format": fmt,
        "n": n,
        "path": str(out),
        **kept,
    }


def module_of(node: onnx.NodeProto) -> str | None:
    """The PyTorch module an exported ONNX node came from, by the name scopes torch.onnx
    records (``['', 'inception3a', 'branch1', 'conv', 'conv2d']`` -> ``inception3a.branch1.conv``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return ".".join(scopes[1:-1]) or None
    return None


def sensitive_modules(
    model: nn.Module, example: torch.Tensor, calibration: Sequence, images: np.ndarray
) -> list[str]:
    """``model``'s layers by PyTorch module name, the most hurt by int8 first: the ranking of
    :func:`sensitive_nodes` (ONNX Runtime, per-channel weights as XNNPACK's) mapped back to
    modules through the exporter's name scopes."""
    proto = to_onnx(model, example)  # a batch of 2 or more: the batch stays dynamic
    modules = {node.name: module_of(node) for node in proto.graph.node}
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        onnx.save(proto, str(float_path))
        int8_path = quantize_int8(
            float_path,
            Path(tmp) / "int8.onnx",
            [np.asarray(b, np.float32) for b in calibration],
            DEFAULT_INT8_FORMAT,
            True,
            needs_reduce_range(),
            calibration_method="minmax",
        )
        ranked = sensitive_nodes(float_path, int8_path, images)
    return list(dict.fromkeys(m for name, _ in ranked if (m := modules.get(name))))


def choose_executorch_int8(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Sequence,
    val_batches: Iterable[tuple],
    observers: Sequence[str] = OBSERVERS,
    max_drop: float | None = MAX_DROP,
) -> tuple[bytes, dict, dict]:
    """ExecuTorch's int8 chosen as ONNX Runtime's is (the module's doc): one XNNPACK program
    per activation observer (``OBSERVERS``), each run in the ExecuTorch runtime on
    ``val_batches`` and the most accurate kept; then, if it loses more than ``max_drop`` of
    the float model's top-1 there, the layers :func:`sensitive_modules` ranks worst stay
    float, 1, 2, 4, ... (at most ``MAX_FLOAT_SHARE`` of them), until it does not.

    Returns the program's bytes, :func:`~.executorch.delegation`'s summary and the choice
    (``{"top1": {observer: accuracy}, "observer", "n", "float_top1", "kept_float",
    "top1_kept_float"}``).
    """
    val = list(val_batches)
    n = sum(len(labels) for _, labels in val)
    if n == 0:
        raise DeepRebirthError("choosing int8 settings needs validation images; none given")

    def lower(observer: str, float_modules: Sequence[str] = ()) -> tuple[bytes, dict, float]:
        program, summary = to_executorch(model, example, calibration, observer, float_modules)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidate.pte"
            path.write_bytes(program)
            return program, summary, _top1(PteModel(path), val)

    candidates = {observer: lower(observer) for observer in dict.fromkeys(observers)}
    top1 = {observer: c[2] for observer, c in candidates.items()}
    best = max(top1, key=top1.__getitem__)  # the first of equals
    program, summary, accuracy = candidates[best]
    choice = {"top1": top1, "observer": best, "n": n, "float_top1": None}
    choice |= {"kept_float": [], "top1_kept_float": {}}
    if max_drop is None:
        return program, summary, choice
    choice["float_top1"] = _top1(model.eval(), val)
    if accuracy >= choice["float_top1"] - max_drop:
        return program, summary, choice
    images = np.concatenate([np.asarray(x, np.float32) for x, _ in val])[:SENSITIVITY_IMAGES]
    ranked = sensitive_modules(model, example, calibration, images)
    tried, best_k, k = {0: accuracy}, 0, 1
    while k <= max(1, int(MAX_FLOAT_SHARE * len(ranked))) and k <= len(ranked):
        candidate = lower(best, ranked[:k])
        tried[k] = candidate[2]
        if tried[k] > tried[best_k]:
            best_k, (program, summary, _) = k, candidate
        if tried[k] >= choice["float_top1"] - max_drop:
            break
        k *= 2
    choice |= {"kept_float": ranked[:best_k], "top1_kept_float": tried}
    return program, summary, choice
