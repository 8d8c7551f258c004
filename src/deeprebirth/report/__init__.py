"""The slimming report: markdown, JSON and plots."""

from .energy import energy_note, rapl_counters
from .markdown import REFERENCES, build_report, reference_model, write_report

__all__ = [
    "REFERENCES",
    "build_report",
    "energy_note",
    "rapl_counters",
    "reference_model",
    "write_report",
]
