"""How should the block latency model's line be fitted? (issue #32)

The block model predicts a plan as its blocks' sum plus ``constant + ms_per_mb * weight MB``,
the two fitted on the base and four plans timed whole (``BlockLatency.calibrate``). This
script refits that line on every row of benchmarks/results/latency_model.json from the
numbers the row recorded (each fitted plan's weights, blocks' sum and measured latency) in
two ways: least squares of the absolute error (ms; the model until 2026-12-07 evening) and of
the relative error (each residual over its network's latency: ``blocks.fit_beyond``, the
model since), and predicts the row's 10 checked option sets with each. Records the median
and worst error over the sets and the worst over the fitted plans themselves (what a
selection's ``MAX_CALIBRATION_MISS`` guard reads). Nothing is timed: the rows' own
measurements are reused (their machines and dates are in latency_model.json). Writes
benchmarks/results/latency_fit.{json,md} with the command, commit, date and machine.

    .venv/bin/python benchmarks/latency_fit.py
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from provenance import provenance, write_page

from deeprebirth.files import write_json
from deeprebirth.planning.blocks import fit_beyond

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks/results/latency_model.json"
RESULTS = ROOT / "benchmarks/results/latency_fit"


def absolute_fit(points: list[dict]) -> tuple[float, float]:
    """``(ms_per_mb, constant)`` by least squares of the absolute error (a negative price: 0,
    the mean beyond the blocks)."""
    mbs = [p["weights_mb"] for p in points]
    beyond = [p["measured_ms"] - p["blocks_ms"] for p in points]
    if len(set(mbs)) > 1:
        line = statistics.linear_regression(mbs, beyond)
        if line.slope >= 0:
            return line.slope, line.intercept
    return 0.0, statistics.fmean(beyond)


def errors(points: list[dict], per_mb: float, constant: float) -> list[float]:
    return [
        abs((constant + p["blocks_ms"] + per_mb * p["weights_mb"]) / p["measured_ms"] - 1)
        for p in points
    ]


def refit(row: dict) -> dict:
    fitted, sets = row["fitted_on"], row["sets"]
    out = {
        "model": row["model"],
        "weights": row.get("weights"),
        "size": row["size"],
        "runtime": row["runtime"],
        "calibration_sessions": row.get("calibration_sessions", 3),
        "measured": f"{row['date'][:10]}, {row['machine']['cpu']}",
    }
    fits = {"absolute": absolute_fit(fitted)}
    fits["relative"] = fit_beyond(
        [p["weights_mb"] for p in fitted],
        [p["blocks_ms"] for p in fitted],
        [p["measured_ms"] for p in fitted],
    )
    for how, (per_mb, constant) in fits.items():
        e = errors(sets, per_mb, constant)
        out[how] = {
            "ms_per_mb": per_mb,
            "constant_ms": constant,
            "median_abs_error": statistics.median(e),
            "worst_abs_error": max(e),
            "calibration_miss": max(errors(fitted, per_mb, constant)),
        }
    return out


def write_md(data: dict) -> None:
    def cell(f: dict) -> str:
        return (
            f"{100 * f['median_abs_error']:.1f}% / {100 * f['worst_abs_error']:.1f}% "
            f"| {100 * f['calibration_miss']:.1f}%"
        )

    lines = [
        "# The block model's line: least squares of the absolute or of the relative error",
        "",
        "<!-- written by benchmarks/latency_fit.py from latency_fit.json: do not edit -->",
        "",
        "Each row of [latency_model.md](latency_model.md) refitted from what it recorded: "
        "`absolute`: least squares in ms (the model until 2026-12-07 evening); `relative`: each "
        "residual over its network's latency (`blocks.fit_beyond`, the model since). `sets`: "
        "median / worst error over the row's 10 checked option sets; `fitted`: the worst over "
        "the base and the 4 plans the line was fitted on (a selection times each choice whole "
        "above 10%). `sessions`: the sessions those plans were timed whole in. Nothing is "
        "timed here; `measured`: the row's run.",
        "",
        "| network | input | runtime | sessions | absolute: sets | fitted | relative: sets "
        "| fitted | measured |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        name = r["model"] + (f" ({r['weights']})" if r["weights"] else "")
        lines.append(
            f"| {name} | {r['size']} | {r['runtime']} | {r['calibration_sessions']} "
            f"| {cell(r['absolute'])} | {cell(r['relative'])} | {r['measured']} |"
        )
    write_page(RESULTS.with_suffix(".md"), lines, [data])


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    rows = [refit(r) for r in json.loads(SOURCE.read_text())["rows"] if "fitted_on" in r]
    data = {**provenance(), "rows": rows}
    write_json(RESULTS.with_suffix(".json"), data)
    write_md(data)
    for r in rows:
        a, b = r["absolute"], r["relative"]
        print(
            f"{r['model']} {r['size']} {r['runtime']}: worst {100 * a['worst_abs_error']:.1f}% "
            f"-> {100 * b['worst_abs_error']:.1f}%, fitted {100 * a['calibration_miss']:.1f}% "
            f"-> {100 * b['calibration_miss']:.1f}%"
        )


if __name__ == "__main__":
    main()
