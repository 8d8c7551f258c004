"""int8: ONNX Runtime static quantization of an exported model, calibrated on real images.

Static quantization fixes each activation's int8 scale from calibration images, so
inference needs no run-time range computation. The ranges come from one of ORT's
calibrators (:data:`CALIBRATION_METHODS`): ``minmax`` (the default; the extreme values
over the images), ``percentile`` (drops the 0.001% largest magnitudes) or ``entropy``
(the clipping whose int8 histogram is closest to the float one). No one of them wins on
every model, so :func:`~deeprebirth.export.int8_choice.choose_int8` picks on held-out
images. ``quantize_static`` cannot set the entropy calibrator's bins: it gets 128, as many
as it quantizes to, so its only candidate is the full range (that of ``minmax``) unless
the histogram widened while later batches were binned. Two layouts are supported:

* ``qdq`` (the default): QuantizeLinear/DequantizeLinear pairs around float ops, which ORT
  fuses into int8 kernels at load; the layout mobile execution providers (NNAPI, QNN,
  XNNPACK) take;
* ``qoperator``: quantized kernels (``QLinearConv`` ...) written into the graph.

On this project's CPU both ran equally fast (``benchmarks/paper_table.py``). Weights are
8-bit except on x86 CPUs without VNNI, which need 7 (:func:`needs_reduce_range`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from ..errors import DeepRebirthError
from ..files import publish
from ..machine import cpu_isa

INT8_FORMATS = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
#: The layers with weights: nearly all of the arithmetic.
WEIGHTED_OPS = ["Conv", "Gemm", "MatMul"]
#: Ops quantized. Others stay float: with ORT's defaults, QOperator models of the slimmed
#: GoogLeNet lost all accuracy (Split and ReduceMean quantized; Split alone measured fine
#: since, in both layouts, so ReduceMean stays float). ``Relu`` and ``Clip`` (ReLU6) are
#: folded into the quantization of the conv before them (its output's range starts at 0),
#: the ReLUs of fused inception heads too, as the export computes them before the split
#: (:mod:`.rewrite`); a ``Split`` keeps its input's scale, so ORT splits the int8 tensor.
#: Left float, each cost a dequantize-op-quantize round trip
#: (``benchmarks/results/int8_activations.md``). Residual sums (``Add``) between quantized
#: tensors are fused by ORT either way.
QUANTIZED_OPS = [*WEIGHTED_OPS, "Concat", "Split", "Relu", "Clip"]
#: The layout ``export --int8`` uses unless told otherwise.
DEFAULT_INT8_FORMAT = "qdq"
#: ORT's calibrators by the names this project gives them.
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
#: ``platform.machine()`` names of x86 CPUs (Linux, macOS, Windows spellings).
X86_MACHINES = {"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"}
#: CPU flags (``/proc/cpuinfo``) of the instructions that multiply u8 x s8 without saturating.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def reduce_range_for(machine: str, flags: str | Iterable[str]) -> bool:
    """Whether a CPU needs 7-bit weights: x86 without VNNI only.

    There ORT's int8 kernels (``vpmaddubsw``) add u8 x s8 products pairwise into int16,
    which saturates with full 8-bit weights; VNNI accumulates in int32 and ARM's kernels
    do not saturate, so 7 bits would only cost accuracy there.

    Args:
        machine: ``platform.machine()``, e.g. ``"x86_64"``, ``"AMD64"``, ``"arm64"``.
        flags: the CPU's flags, as ``/proc/cpuinfo``'s space-separated string or a list.
    """
    if machine.lower() not in X86_MACHINES:
        return False
    have = set(flags.split() if isinstance(flags, str) else flags)
    return not have.intersection(VNNI_FLAGS)


def needs_reduce_range() -> bool:
    """:func:`reduce_range_for` this machine. Where the flags cannot be read (x86 without
    ``/proc/cpuinfo``: macOS, Windows) the answer is True, the setting safe everywhere."""
    return reduce_range_for(platform.machine(), cpu_isa())


class _Batches(CalibrationDataReader):
    """The calibration batches; ``set_range`` lets ORT calibrate on a few at a time."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = batches
        self.set_range(0, len(batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def prepare_for_int8(model: onnx.ModelProto | str | Path, out: Path) -> Path:
    """``model`` as the quantizer sees it: shapes inferred, the graph cleaned up (constants
    folded, batch-norms fused); its tensor names are those of the int8 model."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "float.onnx"
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        onnx.save(proto, str(source))
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


def quantize_int8(
    model: onnx.ModelProto | str | Path,
    out: str | Path,
    calibration: Iterable[np.ndarray],
    fmt: str = DEFAULT_INT8_FORMAT,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    calibration_method: str = "minmax",
    float_output: bool = True,
    **options,
) -> Path:
    """Quantize a float ONNX model to int8 (weights per channel, activations per tensor).

    Args:
        model: the float model (a ModelProto or a path to an ``.onnx`` file).
        out: where to write the int8 model (written atomically).
        calibration: batches of input images as float32 arrays (NCHW), e.g. a few hundred
            training images; the activation ranges come from them.
        fmt: ``"qoperator"`` or ``"qdq"``.
        reduce_range: 7-bit weights; None (the default) asks :func:`needs_reduce_range`,
            so True on x86 CPUs without VNNI and False elsewhere. Set it when the model
            is built for another machine than the one quantizing it.
        calibration_method: how the activation ranges are set from ``calibration``, one of
            :data:`CALIBRATION_METHODS`. ``percentile`` and ``entropy`` build histograms;
            they are fed one batch at a time (ORT's ``CalibStridedMinMax``) so that memory
            does not grow with the number of images.
        float_output: in QDQ, the output is the last layer's float result
            (:func:`float_outputs`); False keeps it quantized and dequantized.
        options: passed to ``onnxruntime.quantization.quantize_static``, overriding the
            settings above (``extra_options`` are merged key by key).
    """
    if fmt not in INT8_FORMATS:
        raise DeepRebirthError(
            f"unknown int8 format {fmt!r}; choose from {', '.join(INT8_FORMATS)}"
        )
    if calibration_method not in CALIBRATION_METHODS:
        raise DeepRebirthError(
            f"unknown int8 calibration method {calibration_method!r}; "
            f"choose from {', '.join(CALIBRATION_METHODS)}"
        )
    if reduce_range is None:
        reduce_range = needs_reduce_range()
    out = Path(out)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    input_name = proto.graph.input[0].name
    batches = [np.ascontiguousarray(b, np.float32) for b in calibration]
    extra = dict(options.pop("extra_options", None) or {})
    if calibration_method != "minmax":
        # ORT's histogram calibrators otherwise hold every calibrated activation of every
        # image in memory (and copy it) before binning; with a stride of one batch, each
        # batch is binned into the running histograms, then dropped.
        extra.setdefault("CalibStridedMinMax", 1)
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer logs advice at INFO
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_for_int8(proto, Path(tmp) / "prepared.onnx")
        result = Path(tmp) / "int8.onnx"
        if fmt == "qdq" and float_output:
            # a folded activation would be lost with its output's quantization
            kept = output_activations(onnx.load(str(prepared)))
            options["nodes_to_exclude"] = [*options.get("nodes_to_exclude", ()), *kept]
        # The histogram calibrators print their progress.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(result),
                _Batches(input_name, batches),
                quant_format=INT8_FORMATS[fmt],
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # 7-bit weights where u8 x s8 products saturate (x86 without VNNI): on an
                # AVX2-only EPYC, 8-bit ones cost the slimmed GoogLeNet 4 points of top-1.
                reduce_range=reduce_range,
                **{
                    "op_types_to_quantize": QUANTIZED_OPS,
                    "calibrate_method": CALIBRATION_METHODS[calibration_method],
                    "extra_options": extra,
                    **options,
                },
            )
        if fmt == "qdq" and float_output:
            onnx.save(float_outputs(onnx.load(str(result))), str(result))
        onnx.checker.check_model(str(result))
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        staged.write_bytes(result.read_bytes())
        publish(staged, out)
    return out


def output_activations(model: onnx.ModelProto) -> list[str]:
    """The names of the activations (of :data:`QUANTIZED_OPS`) that make a graph output. The
    quantizer folds an activation into its output's quantization (the range starts at 0);
    where :func:`float_outputs` then drops that quantization, the activation must stay a
    float op."""
    outputs = {o.name for o in model.graph.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("Relu", "Clip") and outputs.intersection(n.output)
    ]


def int8_to_time(model: onnx.ModelProto, example: np.ndarray) -> onnx.ModelProto:
    """``model`` quantized as :func:`quantize_int8` does by default, its ranges calibrated on
    one random input of ``example``'s shape: a model to time, not to compute with (the
    scales change what int8 kernels compute, hardly how long they take; the values do
    matter to some: see :func:`~deeprebirth.planning.blocks.split`).

    Its input and output are quantized, as a block's are inside a network of int8 layers
    (:func:`quantized_io`): ONNX Runtime moves a quantization through the layers that
    commute with it, and a max-pool between two quantized tensors runs on uint8, much
    slower than in float (GoogLeNet at 64x64: pool2, 0.25 ms against 0.006 ms). Timed alone
    with a float input and output, GoogLeNet's blocks summed to 0.5 ms (15%) less than the
    network took in int8. A whole network so timed runs its classifier in int8, where the
    export leaves the logits float (:func:`float_outputs`): a few thousand MACs."""
    x = np.random.default_rng(0).standard_normal(example.shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = quantize_int8(model, Path(tmp) / "int8.onnx", [x], float_output=False)
        return quantized_io(onnx.load(str(out)))


def quantized_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ) with its input quantized and dequantized before the layers that read
    it in float, and each output that a layer left float (a pool) quantized and dequantized;
    the pairs' scales are arbitrary (uint8 over -4..4): the model is for timing."""
    graph = model.graph
    scale, zero = "io_scale", "io_zero_point"
    graph.initializer.extend(
        [
            onnx.helper.make_tensor(scale, onnx.TensorProto.FLOAT, [], [8 / 255]),
            onnx.helper.make_tensor(zero, onnx.TensorProto.UINT8, [], [128]),
        ]
    )

    def pair(source: str, target: str) -> list[onnx.NodeProto]:
        q = f"{target}_io_quantized"
        return [
            onnx.helper.make_node("QuantizeLinear", [source, scale, zero], [q]),
            onnx.helper.make_node("DequantizeLinear", [q, scale, zero], [target]),
        ]

    head, tail = [], []  # pairs on the inputs (before every node), on the outputs (after)
    for tensor in graph.input:
        floats = [n for n in graph.node if tensor.name in n.input and n.op_type != "QuantizeLinear"]
        if floats:
            target = f"{tensor.name}_io_dequantized"
            for node in floats:
                node.input[:] = [target if i == tensor.name else i for i in node.input]
            head += pair(tensor.name, target)
    producer = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        made = producer.get(output.name)
        if made is not None and made.op_type != "DequantizeLinear":
            raw = f"{output.name}_io_float"
            made.output[:] = [raw if o == output.name else o for o in made.output]
            tail += pair(raw, output.name)
    nodes = [*head, *graph.node, *tail]
    graph.ClearField("node")
    graph.node.extend(nodes)
    return model


def float_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ) without the quantize-dequantize pair on its outputs: the logits stay
    float. Rounded to 8 bits, two classes' logits tie on about 3% of the images (the
    slimmed + Tucker-2 GoogLeNet at 64x64), and the top-1 then depends on how ties break."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        dq = producer.get(output.name)
        q = (
            producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear"
            else None
        )
        if q is None or q.op_type != "QuantizeLinear" or readers.get(q.output[0]) != 1:
            continue
        source = q.input[0]
        graph.node.remove(q)
        graph.node.remove(dq)
        for node in graph.node:  # the float tensor takes the output's name
            node.output[:] = [output.name if o == source else o for o in node.output]
            node.input[:] = [output.name if i == source else i for i in node.input]
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # the pairs' scales
        graph.initializer.remove(init)
    return model
