"""What the command line prints when its console is a log file rather than a terminal."""

import io

from rich.console import Console

from deeprebirth.report.console import ConsoleHooks


def test_tuning_progress_writes_a_line_per_tenth_to_a_log():
    log = io.StringIO()
    hooks = ConsoleHooks(Console(file=log, width=200), Console(file=io.StringIO()))
    with hooks.tuning_progress(is_main=True) as progress:
        for step in range(1, 101):
            progress("streamline:conv2", step, 100, 1.0 / step)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11  # the first batch, then every tenth
    assert lines[0] == "tune streamline:conv2: 1/100 batches, loss 1.0000"
    assert lines[-1].startswith("tune streamline:conv2: 100/100 batches, loss 0.0100, 0.0 min left")


def test_tuning_progress_is_silent_off_the_main_process():
    log = io.StringIO()
    hooks = ConsoleHooks(Console(file=log), Console(file=io.StringIO()))
    with hooks.tuning_progress(is_main=False) as progress:
        progress("s", 1, 2, 0.5)
    assert log.getvalue() == ""


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes(tmp_path):
    from deeprebirth.report.plots import pareto_front, plot_accuracy_latency

    points = [
        {"name": "teacher", "latency_ms": 10.0, "top1": 0.92},
        {"name": "slimmed", "latency_ms": 5.0, "top1": 0.90},  # beaten by squeezenet
        {"name": "squeezenet", "latency_ms": 1.3, "top1": 0.91},
        {"name": "slower, worse", "latency_ms": 11.0, "top1": 0.5},
        {"name": "not measured", "latency_ms": 3.0, "top1": None},
    ]
    assert [p["name"] for p in pareto_front(points)] == ["squeezenet", "teacher"]
    assert plot_accuracy_latency(points, tmp_path / "p.png").stat().st_size > 0
