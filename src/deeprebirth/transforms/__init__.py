"""Graph rewrites: exact merges, streamline merges, branch merges, and the runner."""

from .base import Merge, propagate_shapes
from .runner import MERGES, PARITY_TOLERANCE, PHASES, SlimReport, apply_plan, relative_error

__all__ = [
    "MERGES",
    "PARITY_TOLERANCE",
    "PHASES",
    "Merge",
    "SlimReport",
    "apply_plan",
    "propagate_shapes",
    "relative_error",
]
