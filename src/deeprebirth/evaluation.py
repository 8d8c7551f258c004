"""Accuracy: top-1 and top-5 on a data set's test split; self-describing weight files.

A weights file written by :func:`save_weights` carries the model's name and configuration in
its safetensors header, so ``deeprebirth evaluate FILE`` can rebuild the model from it alone.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError, DeepRebirthError
from .files import publish
from .zoo import get_model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy, as fractions, with the number of images ``n``.

    Example:
        >>> from deeprebirth import get_model, get_dataset, get_loader
        >>> ds = get_dataset("synthetic", input_size=32, num_classes=10)
        >>> evaluate(get_model("bvlc_googlenet", num_classes=10), get_loader(ds))["n"]
        64
    """
    model.eval()
    top1 = top5 = n = 0
    for x, y in loader:
        logits = model(x)
        if logits.shape[1] <= int(y.max()):
            raise DeepRebirthError(
                f"the model has {logits.shape[1]} outputs but the data has class {int(y.max())}"
            )
        k = min(5, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        hits = best == y[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        n += len(y)
        if on_batch:
            on_batch(len(y))
    if n == 0:
        raise DeepRebirthError("no images to evaluate")
    return {"top1": top1 / n, "top5": top5 / n, "n": n}


def save_weights(
    model: nn.Module, path: str | Path, meta: dict[str, Any], dtype=torch.float16
) -> Path:
    """Write the weights (fp16 by default) with ``meta`` (model name, config) in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={k: str(v) for k, v in meta.items()})
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def weights_meta(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e


def load_model_file(path: str | Path) -> tuple[nn.Module, int, int]:
    """Rebuild a model from a weights file written by :func:`save_weights`.

    Returns ``(model, input_size, in_chans)``.
    """

    meta = weights_meta(path)
    if "model" not in meta:
        raise CheckpointError(
            f"{path} does not say which model it holds; pass the model name and --checkpoint {path}"
        )
    config = {k: int(meta[k]) for k in ("num_classes", "in_chans") if k in meta}
    model = get_model(meta["model"], checkpoint=path, **config)
    return model, int(meta.get("input_size", 224)), config.get("in_chans", 3)
