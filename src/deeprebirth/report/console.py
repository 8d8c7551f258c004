"""What the pipeline shows, printed on a terminal (rich): the :class:`~deeprebirth.report.hooks.Hooks`
that the command line fills in.

``log`` and ``note`` go to stderr; tables and results to stdout (``out``), so a piped
command still prints its results whole.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..profiling.console import print_profile
from .hooks import Hooks
from .tables import plan_table, selection_summary, selection_table


class ConsoleHooks:
    """``log``/``note``/``show``/``tuning_progress`` on ``console`` (stderr) and ``out``
    (stdout); :meth:`hooks` hands them to :func:`deeprebirth.pipeline.run`."""

    def __init__(self, console: Console, out: Console):
        self.console, self.out = console, out

    def log(self, msg: str) -> None:
        self.console.print(f"[dim]… {msg}[/dim]")

    def note(self, msg: str) -> None:
        self.console.print(f"[yellow]note:[/yellow] {msg}")

    def show(self, what: str, value) -> None:
        out = self.out
        if what == "profile":
            print_profile(value[0], out, top=value[1])
        elif what == "plan":
            out.print(plan_table(value))
        elif what == "reverted":
            self.console.print(f"[yellow]reverted[/yellow] {value[0]}: {value[1]}")
        elif what == "selection":
            out.print(selection_table(value, value.budget_ms, value.runtime))
            out.print(selection_summary(value))
        elif what == "accuracy":
            for who, r in value.items():
                out.print(
                    f"{who}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
                    f"({r['n']} test images); validation top-1 {100 * r['val_top1']:.2f}%"
                )
        elif what == "reference":
            out.print(f"{value[0]} (reference): top-1 {100 * value[1]['top1']:.2f}%")
        elif what == "evaluation":
            r = value
            out.print(
                f"{r['model']} on {r['data']} ({r['split']}): top-1 {100 * r['top1']:.2f}%  "
                f"top-5 {100 * r['top5']:.2f}%  ({r['n']} images)"
            )
        elif what == "export":
            self.show_export(value)
        else:
            raise ValueError(f"nothing shows {what!r}")

    def show_export(self, r: dict) -> None:
        if "delegation" in r:
            d = r["delegation"]
            portable = {k: v for k, v in d["portable_ops"].items() if k != "getitem"}
            self.out.print(
                f"XNNPACK runs {d['delegated_nodes']} operators in {d['delegated_subgraphs']} "
                "subgraph(s); portable kernels run "
                + (", ".join(f"{k} x{v}" for k, v in portable.items()) or "nothing else")
            )
        if r.get("leftover_non_tensor"):
            self.note(f"non-tensor layers left in the ONNX graph: {r['leftover_non_tensor']}")
        where = "real" if r["real_inputs"] else "random"
        line = f"exported {r['path']} ({r['what']}); parity with PyTorch on {r['inputs'][0]} {where} inputs: "
        if "top1_agreement" in r:
            line += f"top-1 unchanged on {100 * r['top1_agreement']:.1f}%, "
        self.out.print(f"{line}error {r['relative_error']:.1e} of the output's scale")
        if r.get("smoothed_pairs"):
            self.out.print(
                f"int8: {r['smoothed_pairs']} pair(s) of convs with nothing between them "
                "share their ranges first (smoothed; exact in float)"
            )
        choice = r.get("int8_choice")
        if choice:
            tried = ", ".join(f"{m} {100 * a:.2f}%" for m, a in choice["top1"].items())
            line = (
                f"int8 calibration: {choice.get('method') or choice.get('observer')}, the best "
                f"top-1 on {choice['n']} validation images ({tried})"
            )
            if "reduce_range" in r:  # ONNX Runtime's weights
                bits = "7-bit weights (this CPU has no VNNI)" if r["reduce_range"] else "8-bit"
                line += f"; {bits}" + ("" if r["reduce_range"] else " weights")
            self.out.print(line)
            if choice.get("kept_float"):
                tries = ", ".join(
                    f"{k} {100 * a:.2f}%" for k, a in choice["top1_kept_float"].items()
                )
                self.out.print(
                    f"int8 kept {len(choice['kept_float'])} layer(s) in float, those "
                    f"quantization hurt most (float model {100 * choice['float_top1']:.2f}%; "
                    f"top-1 by layers kept in float: {tries}): {', '.join(choice['kept_float'])}"
                )

    @contextmanager
    def tuning_progress(self, is_main: bool):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        if is_main and not self.console.is_terminal:  # a log file: a plain line per tenth
            yield self._progress_lines()
            return
        tasks: dict[str, int] = {}
        with Progress(*columns, console=self.console, disable=not is_main) as bar:

            def progress(stage: str, step: int, total: int, loss: float) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(f"tune {stage}", total=total, loss=loss)
                bar.update(tasks[stage], completed=step, loss=loss)

            yield progress

    def _progress_lines(self):
        """``progress`` for a console that is not a terminal (a log, a pipe): a line when a
        stage starts and at every tenth of it, with the loss and the time left."""
        started: dict[str, float] = {}

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            start = started.setdefault(stage, now)
            if step != 1 and step * 10 // total == (step - 1) * 10 // total:
                return
            line = f"tune {stage}: {step}/{total} batches, loss {loss:.4f}"
            if step > 1:  # the time left, at the pace since the first batch
                line += f", {(now - start) / (step - 1) * (total - step) / 60:.1f} min left"
            self.console.print(line, highlight=False, soft_wrap=True)

        return progress

    @contextmanager
    def counting(self, what: str):
        """A transient progress bar; yields ``progress(done, total)``."""
        with Progress(console=self.console, transient=True) as bar:
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    def hooks(self):
        return Hooks(
            log=self.log, note=self.note, show=self.show, tuning_progress=self.tuning_progress
        )
