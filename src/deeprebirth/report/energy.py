"""Energy per inference from the CPU's RAPL counters, where the machine exposes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def rapl_counters() -> list[Path]:
    """Package-level RAPL energy counters (microjoules), readable by this process."""
    if not POWERCAP.is_dir():
        return []
    found = []
    for zone in sorted(POWERCAP.glob("intel-rapl:*")):
        counter = zone / "energy_uj"
        if ":" in zone.name and zone.name.count(":") == 1 and counter.is_file():
            try:
                int(counter.read_text())
                found.append(counter)
            except (OSError, ValueError):
                continue
    return found


def energy_per_call_mj(fn: Callable[[], object], runs: int = 30) -> float | None:
    """Millijoules per call of ``fn`` (whole-package energy), or None without RAPL."""
    counters = rapl_counters()
    if not counters:
        return None
    before = sum(int(c.read_text()) for c in counters)
    for _ in range(runs):
        fn()
    after = sum(int(c.read_text()) for c in counters)
    return (after - before) / 1e3 / runs  # counters wrap rarely; a negative value means one did


def energy_note() -> str:
    if rapl_counters():
        return "Energy per inference from the RAPL package counters (whole CPU package, idle included)."
    where = POWERCAP if POWERCAP.exists() else f"{POWERCAP} (absent)"
    return (
        f"Energy: this machine exposes no readable RAPL energy counters ({where}), so no energy "
        "figure is given rather than an invented one."
    )
