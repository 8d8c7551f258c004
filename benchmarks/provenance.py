"""What every committed number records of its run: the command, the commit (``+dirty`` when
src/ or benchmarks/ had uncommitted changes), the date and the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deeprebirth.files import atomic_write_text, write_json
from deeprebirth.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def git_commit() -> str:
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks")
    return f"{commit}+dirty" if dirty else commit


def provenance() -> dict:
    """``command``, ``commit``, ``date`` and ``machine`` of this run."""
    info = machine_info()
    return {
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "date": info.pop("date"),
        "machine": info,
    }


def record_row(path: Path, row: dict, keys: tuple[str, ...]) -> dict:
    """Add ``row`` to the results file ``path`` (``{"rows": [...]}``), replacing the row
    that has the same values at ``keys`` (a key an older row lacks counts as None);
    returns the file's data, written."""
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    same = tuple(row[k] for k in keys)
    data["rows"] = [r for r in data["rows"] if tuple(r.get(k) for k in keys) != same] + [row]
    write_json(path, data)
    return data


def write_page(path: Path, lines: list[str], rows: list[dict]) -> None:
    """Write a results page: ``lines``, then the commands its ``rows`` were measured with."""
    commands = sorted({f"`{r['command']}`" for r in rows})
    atomic_write_text(path, "\n".join([*lines, "", "Commands: " + ", ".join(commands), ""]))
