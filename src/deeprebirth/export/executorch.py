"""ExecuTorch with the XNNPACK delegate: the runtime PyTorch ships for phones.

``torch.export`` → ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` → a
``.pte`` program. What XNNPACK takes runs in its kernels; the rest falls back to the
runtime's portable kernels (:func:`delegation` says which is which). LRN, which the
runtime's kernel library lacks as ``F.local_response_norm`` writes it, is rewritten first
(:class:`BandedLRN`: the squared activations summed over the channel window by a constant
banded 1x1 conv, then the power and the division). int8 uses the XNNPACK quantizer through
PT2E (torchao), calibrated on images the caller gives (training images).

ExecuTorch is an optional extra: ``pip install 'deeprebirth[mobile]'``; its modules are
imported inside the functions that use them, so that the rest runs without it.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeepRebirthError
from ..zoo.layers import channel_window
from .rewrite import activations_before_splits

EXTRA = "mobile"
SUFFIX = ".pte"
#: Bumped whenever the runtime's thread pool is rebuilt: programs loaded before then hold
#: the old pool and must be loaded again (:func:`set_threads`).
_pool = {"generation": 0}


def set_threads(threads: int) -> None:
    """Size the ExecuTorch thread pool that XNNPACK's kernels run on.

    The runtime can only rebuild its pool, and a program loaded before that must not run
    again: :class:`PteModel` reloads itself when the pool changed under it.
    """
    require_executorch()
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
        _pool["generation"] += 1


def require_executorch() -> None:
    """A one-line error naming the extra when ExecuTorch is not installed."""
    try:
        import executorch  # noqa: F401
    except ImportError as e:
        raise DeepRebirthError(
            f"ExecuTorch is not installed: pip install 'deeprebirth[{EXTRA}]' (executorch)"
        ) from e


def is_pte_file(spec: str | Path) -> bool:
    return str(spec).endswith(SUFFIX)


class BandedLRN(nn.Module):
    """Across-channel LRN for a known number of channels, its window band a constant buffer.

    Computes what ``F.local_response_norm`` computes, in operators XNNPACK runs (conv, mul,
    add, log, exp, div): the band is a buffer, so XNNPACK takes the conv, and the power
    ``beta`` is ``exp(beta * log(.))`` (its base is at least ``k`` > 0), since XNNPACK's own
    power takes only squares.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, channels: int):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.register_buffer("window", channel_window(channels, size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        div = F.conv2d(x * x, self.window).mul(self.alpha / self.size).add(self.k)
        return x / torch.exp(torch.log(div) * self.beta)


def _splits_as_slices(gm: torch.fx.GraphModule) -> None:
    """``torch.split`` along channels (the fused inception heads) as one ``narrow`` per
    piece: XNNPACK takes slices but not splits, which would each break its subgraph."""
    for node in list(gm.graph.nodes):
        if node.target is not torch.split or not isinstance(node.args[1], (list, tuple)):
            continue
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if any(u.target is not operator.getitem for u in node.users):
            continue
        starts = [sum(node.args[1][:i]) for i in range(len(node.args[1]))]
        for user in list(node.users):
            i = user.args[1]
            with gm.graph.inserting_before(user):
                piece = gm.graph.call_function(
                    torch.narrow, (node.args[0], dim, starts[i], node.args[1][i])
                )
            user.replace_all_uses_with(piece)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    gm.recompile()


def for_mobile(model: nn.Module, example: torch.Tensor, int8: bool = False) -> nn.Module:
    """A copy of ``model`` as the phone runtime wants it: LRN layers as :class:`BandedLRN`
    (channels found by running ``example``), activations after a channel split before it
    (:mod:`.rewrite`; not for ``int8``: XNNPACK's int8 slices of a conv + ReLU output fail
    at run time in executorch 1.5.1, "Attempted to resize a static tensor"), channel splits
    as slices. The model itself is untouched."""
    if not int8:
        model = activations_before_splits(model)
    if isinstance(model, torch.fx.GraphModule) and any(
        n.target is torch.split for n in model.graph.nodes
    ):
        model = copy.deepcopy(model)
        _splits_as_slices(model)
    lrns = {n: m for n, m in model.named_modules() if isinstance(m, nn.LocalResponseNorm)}
    if not lrns:
        return model
    channels: dict[str, int] = {}

    def seen(name: str):
        def hook(_module, args) -> None:
            channels[name] = args[0].shape[1]

        return hook

    hooks = [m.register_forward_pre_hook(seen(n)) for n, m in lrns.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    model = copy.deepcopy(model)
    for name, m in lrns.items():
        if name in channels:  # an LRN the forward pass never reaches stays as it is
            model.set_submodule(name, BandedLRN(m.size, m.alpha, m.beta, m.k, channels[name]))
    return model


#: How int8 activation ranges are fixed (PT2E observers): a histogram whose range minimises
#: the quantization error (the XNNPACK quantizer's default), or the plain min and max.
OBSERVERS = ("histogram", "minmax")


def _quantize(
    program,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor],
    observer: str = "histogram",
    float_modules: Iterable[str] = (),
):
    """PT2E int8 with the XNNPACK quantizer (per-channel symmetric weights), activation
    ranges by ``observer`` (``OBSERVERS``); the modules named in ``float_modules`` stay
    float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if observer not in OBSERVERS:
        raise DeepRebirthError(f"unknown observer {observer!r}; choose from {', '.join(OBSERVERS)}")
    config = get_symmetric_quantization_config(is_per_channel=True)
    if observer == "minmax":
        act = dataclasses.replace(
            config.input_activation,
            observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
        )
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    kept = tuple(float_modules)

    def quantized(node: torch.fx.Node) -> bool:
        """Not the layer whose output is the model's (int8 logits tie), nor a kept module
        (the quantizer's own per-module switch cannot turn one off yet)."""
        if any(user.op == "output" for user in node.users):
            return False
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return not any(p == m or p.startswith(f"{m}.") for p in paths for m in kept)

    quantizer = XNNPACKQuantizer().set_global(config).set_filter_function(quantized)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            for x in batch.split(1):  # the program takes batch 1
                prepared(x)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (example,))


def to_executorch(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor] | None = None,
    observer: str = "histogram",
    float_modules: Iterable[str] = (),
) -> tuple[bytes, dict]:
    """Lower ``model`` (eval mode, batch 1) to an ExecuTorch program for XNNPACK.

    Returns the ``.pte`` bytes and :func:`delegation`'s summary. With ``calibration``
    (batches of images), the program is int8 (``observer`` and ``float_modules``: see
    :func:`_quantize`).
    """
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = example[:1]
    model = for_mobile(model.eval(), example, int8=calibration is not None)
    try:
        program = torch.export.export(model, (example,))
        if calibration is not None:
            program = _quantize(program, example, calibration, observer, float_modules)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        summary = delegation(edge.exported_program().graph_module)
        return edge.to_executorch().buffer, summary
    except DeepRebirthError:
        raise
    except Exception as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepRebirthError(
            f"ExecuTorch export of {type(model).__name__} failed: {cause}"
        ) from e


def delegation(graph_module: torch.fx.GraphModule) -> dict:
    """Which operators XNNPACK runs and which fall back to the portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = info.delegation_by_operator
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "portable_nodes": info.num_non_delegated_nodes,
        "delegated_ops": {k: v.delegated for k, v in sorted(by_op.items()) if v.delegated},
        "portable_ops": {k: v.non_delegated for k, v in sorted(by_op.items()) if v.non_delegated},
    }


class PteModel(nn.Module):
    """Runs a ``.pte`` program in the ExecuTorch runtime; ``forward`` takes a batch of
    images and runs them one by one (the program's batch is 1).

    Example:
        >>> m = PteModel("model.pte")  # doctest: +SKIP
        >>> m(torch.randn(8, *m.input_shape[1:])).shape  # doctest: +SKIP
    """

    runtime = "executorch"

    def __init__(self, path: str | Path):
        super().__init__()
        require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        if not self.path.is_file():
            raise DeepRebirthError(f"no such ExecuTorch program: {self.path}")
        self._runtime = Runtime.get()
        self._loaded = None
        self.input_shape = tuple(self.method.metadata.input_tensor_meta(0).sizes())
        self.in_chans, self.input_size = self.input_shape[1], self.input_shape[2]

    @property
    def method(self):
        """The loaded ``forward`` method, loaded again if the thread pool changed."""
        if self._loaded is None or self._loaded[0] != _pool["generation"]:
            self._loaded = None  # drop the old program before loading anew
            try:
                program = self._runtime.load_program(self.path)
                self._loaded = (_pool["generation"], program, program.load_method("forward"))
            except Exception as e:
                raise DeepRebirthError(f"cannot load {self.path} in ExecuTorch: {e}") from e
        return self._loaded[2]

    def run_one(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.contiguous()])[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise DeepRebirthError(
                f"{self.path} takes inputs of shape {list(self.input_shape)}, not {list(x.shape)}"
            )
        return torch.cat([self.run_one(xi) for xi in x.split(1)])
