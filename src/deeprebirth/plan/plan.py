"""The plan: every merge found in a model, as an editable, versioned JSON file.

A user can disable an entry (``"enabled": false``) or edit a learned merge's geometry, and
pass the file back with ``--plan``. Application checks that each entry still matches the
model, and that edited geometry still gives the original block's output shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import DeepRebirthError
from ..files import write_json

PLAN_VERSION = 1


class PlanError(DeepRebirthError):
    """A plan file that cannot be read or does not match the model."""


@dataclass
class PlanEntry:
    #: Unique name, e.g. ``"streamline:conv1.conv"``.
    id: str
    #: Which merge: see ``deeprebirth.transforms.MERGES``.
    kind: str
    #: Exact merges keep the function (checked by a parity gate); learned ones need tuning.
    exact: bool
    #: Module names the merge involves, anchor first (the nodes it replaces or rewrites).
    nodes: list[str]
    #: The new layer's geometry (kernel, stride, padding, channels), editable.
    geometry: dict[str, Any] = field(default_factory=dict)
    #: MACs the merge removes at the plan's input shape (negative: it adds some).
    macs_saved: int = 0
    #: Milliseconds the entry alone saves, measured by a latency-budget selection on its
    #: runtime (``selection.json`` names it); None when not measured. A merged dense kernel
    #: can save MACs and still cost time.
    latency_saved_ms: float | None = None
    enabled: bool = True
    note: str = ""


@dataclass
class Plan:
    model: str
    input_shape: list[int]
    entries: list[PlanEntry]
    #: Keyword arguments the model was built with (``num_classes``, ``in_chans``).
    model_config: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"{source} is not a deeprebirth plan (expected a JSON object)")
        version = data.get("version")
        if not isinstance(version, int):
            raise PlanError(f"{source} has no format version; is it a deeprebirth plan?")
        if version > PLAN_VERSION:
            raise PlanError(
                f"{source} is plan format v{version}, from a newer deeprebirth; this version "
                f"reads up to v{PLAN_VERSION}: upgrade deeprebirth or re-run `deeprebirth plan`"
            )
        known = {f.name for f in fields(PlanEntry)}
        try:
            entries = [
                PlanEntry(**{k: v for k, v in e.items() if k in known}) for e in data["entries"]
            ]
            return cls(
                model=data["model"],
                input_shape=list(data["input_shape"]),
                entries=entries,
                model_config=dict(data.get("model_config", {})),
                version=version,
            )
        except (KeyError, TypeError) as e:
            raise PlanError(f"{source} is not a valid plan: missing or malformed {e}") from e

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise PlanError(f"plan file {path} does not exist") from e
        except json.JSONDecodeError as e:
            raise PlanError(f"plan file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data, source=str(path))

    def enabled(self, exact_only: bool = False) -> list[PlanEntry]:
        return [e for e in self.entries if e.enabled and (e.exact or not exact_only)]

    def switch(self, enable: Sequence[str] = (), disable: Sequence[str] = ()) -> Plan:
        """Turn entries on or off by id (the plan file's ``"enabled"``, from a recipe).

        Raises:
            PlanError: an id the plan does not have (with the ids it has of that kind).
        """
        by_id = {e.id: e for e in self.entries}
        for ids, on in ((disable, False), (enable, True)):
            for entry_id in ids:
                if entry_id not in by_id:
                    kind = entry_id.split(":")[0]
                    same = sorted(i for i in by_id if i.startswith(kind + ":"))
                    hint = (
                        f"; its {kind} entries: {', '.join(same)}"
                        if same
                        else " (`deeprebirth plan` lists its entries)"
                    )
                    raise PlanError(f"the plan for {self.model} has no entry {entry_id}{hint}")
                by_id[entry_id].enabled = on
        return self
