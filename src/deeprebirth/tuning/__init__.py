"""Layer-wise fine-tuning of the merged layers against the original network."""

from .stages import Stage, find_stages, truncate
from .trainer import TuneConfig, Tuner

__all__ = ["Stage", "TuneConfig", "Tuner", "find_stages", "truncate"]
