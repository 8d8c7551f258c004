"""Planning: the merges a model allows (``discover``), and the set that meets a latency
budget at the least error (``select``)."""

from .discover import make_plan
from .select import BudgetError, Selection, select_plan

__all__ = ["BudgetError", "Selection", "make_plan", "select_plan"]
