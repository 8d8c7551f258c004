"""Plans: the merges found in a model, which a user can read, edit and re-apply."""

from .discover import make_plan
from .plan import PLAN_VERSION, Plan, PlanEntry, PlanError

__all__ = ["PLAN_VERSION", "Plan", "PlanEntry", "PlanError", "make_plan"]
