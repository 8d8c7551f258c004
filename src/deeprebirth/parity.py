"""How close two outputs must be to count as the same function: the gate every exact merge
(``transforms``) and every export (``export``) passes."""

from __future__ import annotations

import torch

#: Largest allowed output error relative to the output's scale (max |a - b| / max |b|).
PARITY_TOLERANCE = 1e-4


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| over max |ref|: the error relative to the output's scale."""
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
