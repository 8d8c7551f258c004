"""An exported ``.onnx`` file used like a model: evaluated and benchmarked in ONNX Runtime.

This is how the deployed artifact (float or int8) is measured, rather than its PyTorch twin.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from ..errors import DeepRebirthError


def ort_session(
    proto: onnx.ModelProto, threads: int, profile_dir: str | None = None
) -> ort.InferenceSession:
    """A CPU session with pinned threads, all graph optimisations, sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(
        proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def is_onnx_file(spec: str | Path) -> bool:
    return str(spec).endswith(".onnx")


class OnnxModel(nn.Module):
    """Runs an ONNX file with ONNX Runtime (CPU); ``forward`` takes and returns tensors.

    Example:
        >>> m = OnnxModel("model.onnx")  # doctest: +SKIP
        >>> m(torch.randn(8, *m.input_shape[1:])).shape  # doctest: +SKIP
    """

    runtime = "ort"

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DeepRebirthError(f"no such ONNX file: {self.path}")
        try:
            self.proto = onnx.load(str(self.path))
            self.session = ort_session(self.proto, threads)
        except Exception as e:
            raise DeepRebirthError(f"cannot load {self.path} with ONNX Runtime: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = [d if isinstance(d, int) else None for d in inp.shape]
        if len(dims) != 4 or None in dims[1:]:
            raise DeepRebirthError(f"{self.path}: expected an NCHW image input, got {inp.shape}")
        self.input_shape = [1, *dims[1:]]
        self.fixed_batch = dims[0]  # None when the batch dimension is dynamic

    @property
    def in_chans(self) -> int:
        return self.input_shape[1]

    @property
    def input_size(self) -> int:
        return self.input_shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, size = x.shape[0], self.fixed_batch
        if size is None or n == size:
            return self._run(x)
        # Exported with a fixed batch size: run in chunks of that size, the last one padded.
        outs = []
        for chunk in x.split(size):
            pad = size - chunk.shape[0]
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros(pad, *chunk.shape[1:])])
            outs.append(self._run(chunk)[: size - pad])
        return torch.cat(outs)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])
