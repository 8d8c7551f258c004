"""The plan format: the merges found in a model, which a user can read, edit and re-apply.
Finding them (``deeprebirth.planning``) and applying them (``deeprebirth.transforms``) build
on it."""

from .config import PlanConfig
from .plan import PLAN_VERSION, Plan, PlanEntry, PlanError

__all__ = ["PLAN_VERSION", "Plan", "PlanConfig", "PlanEntry", "PlanError"]
