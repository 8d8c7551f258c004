"""Profiling: latency, time per layer kind, MACs, parameters, peak activation memory."""

from .plot import plot_profile
from .profile import RUNTIMES, profile, profile_by_name, summarize_layers
from .stats import count_macs, count_params, peak_activation_bytes
from .timing import Timing, measure, measure_interleaved, pin_threads

__all__ = [
    "RUNTIMES",
    "Timing",
    "count_macs",
    "count_params",
    "measure",
    "measure_interleaved",
    "peak_activation_bytes",
    "pin_threads",
    "plot_profile",
    "profile",
    "profile_by_name",
    "summarize_layers",
]
