"""Reading weights safely: safetensors, or state dicts with ``torch.load(weights_only=True)``.

Pickles that would run code are refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError

#: Keys under which training scripts commonly nest the state dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"refused to load {path}: it holds more than tensors (pickled code is never "
            f"executed): {first}"
        ) from e
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``, saying exactly which keys or shapes do not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
