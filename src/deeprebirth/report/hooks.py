"""How the pipeline talks to whoever runs it: :class:`Hooks`, which the command line fills
with printing (``report.console``) and Python callers may leave empty."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any


def nothing(*args) -> None:
    """A hook that ignores what it is given."""
    return None


@dataclass
class Hooks:
    """How the pipeline talks to whoever runs it (the CLI prints; Python callers need not)."""

    #: A line of progress ("tracing ...", "wrote ...").
    log: Callable[[str], None] = nothing
    #: Something the user should know (an untuned model, a reference left out).
    note: Callable[[str], None] = nothing
    #: A result to show: ("profile", (dict, slowest layers to list)), ("plan", Plan), ("reverted", (id, why)),
    #: ("selection", Selection), ("accuracy", dict), ("reference", (name, dict)),
    #: ("export", dict).
    show: Callable[[str, Any], None] = nothing
    #: A context manager giving the tuning progress callback (stage, step, total, loss).
    tuning_progress: Callable[[bool], AbstractContextManager] = lambda is_main: nullcontext()
