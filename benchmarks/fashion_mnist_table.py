"""Tables and the plot made from benchmarks/results/fashion_mnist_64.json (no measuring here).

``reproduce.py table`` writes them; ``tests/test_results_tables.py`` checks that the README's
results section is what :func:`readme_section` makes of the committed results file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import tomllib

from deeprebirth.machine import cpu_label

ROOT = Path(__file__).resolve().parents[1]

LABELS = {
    "teacher": "BVLC GoogLeNet (teacher)",
    "slimmed": "slimmed, layer-wise, default tuning recipe",
    "slimmed_2026_12_03": "slimmed, layer-wise, earlier fine-tune (lr 3e-4, 2 passes)",
    "slimmed_all_at_once": "slimmed, all merged layers at once",
    "slimmed_from_scratch": "slimmed, layer-wise, merged layers from scratch",
    "slimmed_all_at_once_2026_12_03": "slimmed, all merged layers at once, earlier fine-tune (lr 3e-4, 2 passes)",
    "slimmed_from_scratch_2026_12_03": "slimmed, layer-wise, merged layers from scratch, earlier fine-tune (lr 3e-4, 2 passes)",
    "slimmed_depth": "slimmed + depth compression (conv1-conv2 merged)",
    "slimmed_depth_3a": "slimmed + depth compression (conv2_reduce-inception 3a merged)",
    "slimmed_tucker": "slimmed + Tucker-2",
    "slimmed_tucker_int8": "slimmed + Tucker-2 + int8",
    "slimmed_tucker_2026_12_03": "slimmed + Tucker-2, earlier fine-tune (of the earlier slimmed)",
    "slimmed_tucker_int8_2026_12_03": "slimmed + Tucker-2 + int8, earlier (7-bit weights, min/max)",
    "slimmed_tucker_merged_lr_3x": "slimmed + Tucker-2, default recipe with its factors at 3x the rate",
    "slimmed_tucker_int8_merged_lr_3x": "slimmed + Tucker-2 (factors at 3x the rate) + int8",
    "slimmed_tucker_int8_all_layers": "slimmed + Tucker-2 + int8, every layer quantized",
    "slimmed_tucker_int8_sensitivity": "slimmed + Tucker-2 + int8, 2 layers kept float, no smoothing",
    "slimmed_tucker_int8_choice_1024": "slimmed + Tucker-2 + int8, chosen on 1,024 images, 8-bit logits",
    "slimmed_tucker_int8_quantized_logits": "slimmed + Tucker-2 + int8, chosen on 5,000 images, 8-bit logits",
    "mobilenet_v2_int8_unsmoothed": "MobileNetV2 + int8, earlier (min/max calibration, no choice)",
    "slimmed_tucker_int8_float_activations": "slimmed + Tucker-2 + int8, ReLUs left float",
    "squeezenet1_1_int8_float_activations": "SqueezeNet 1.1 + int8, ReLUs left float",
    "mobilenet_v2_int8_float_activations": "MobileNetV2 + int8, ReLU6s left float",
    "mobilenet_v2_depth_int8_float_activations": "MobileNetV2, depth-compressed, default recipe + int8, ReLU6s left float",
    "mobilenet_v2_depth_more_int8_float_activations": "MobileNetV2, depth-compressed, default recipe, 4 more passes + int8, ReLU6s left float",
    "squeezenet1_1": "SqueezeNet 1.1",
    "googlenet_at_squeezenet_speed": "GoogLeNet for SqueezeNet 1.1's latency (out of reach: fastest plan), default recipe",
    "googlenet_at_squeezenet_speed_int8": "GoogLeNet for SqueezeNet 1.1's latency (fastest plan) + int8",
    "squeezenet1_1_int8": "SqueezeNet 1.1 + int8",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v2_int8": "MobileNetV2 + int8",
    "mobilenet_v2_depth": "MobileNetV2, depth-compressed (0.75x budget), default recipe",
    "mobilenet_v2_depth_lr_1e-3": "MobileNetV2, depth-compressed, default recipe but the fine-tune at lr 1e-3",
    "mobilenet_v2_depth_lr_1e-3_int8": "MobileNetV2, depth-compressed, fine-tune at lr 1e-3 + int8",
    "mobilenet_v2_depth_int8": "MobileNetV2, depth-compressed, default recipe + int8",
    "mobilenet_v2_depth_stagewise": "MobileNetV2, depth-compressed, a stage per chain (first run)",
    "mobilenet_v2_depth_stagewise_int8": "MobileNetV2, depth-compressed, a stage per chain + int8",
    "mobilenet_v2_depth_linearized": "MobileNetV2, depth-compressed, gradual linearization",
    "mobilenet_v2_depth_linearized_int8": "MobileNetV2, depth-compressed, linearized + int8",
    "mobilenet_v2_depth_long": "MobileNetV2, depth-compressed, linearized, 5-pass fine-tune",
    "mobilenet_v2_depth_augmented": "MobileNetV2, depth-compressed, augmented, 10-pass fine-tune",
    "mobilenet_v2_depth_ended": "MobileNetV2, depth-compressed, chains end in ReLU6, 5-pass fine-tune",
    "mobilenet_v2_depth_ended_more": "MobileNetV2, depth-compressed, chains end in ReLU6, 10-pass fine-tune",
    "mobilenet_v2_depth_more": "MobileNetV2, depth-compressed, default recipe, 4 more passes",
    "mobilenet_v2_depth_more_int8": "MobileNetV2, depth-compressed, default recipe, 4 more passes + int8",
}
#: The README's rows: the teacher, the references, and the best of each line of work (chosen
#: on val); every model is in the paper's table (benchmarks/results/fashion_mnist_64.md).
HEADLINE = (
    "teacher",
    "squeezenet1_1",
    "squeezenet1_1_int8",
    "googlenet_at_squeezenet_speed",
    "googlenet_at_squeezenet_speed_int8",
    "slimmed",
    "slimmed_tucker",
    "slimmed_tucker_int8",
    "mobilenet_v2",
    "mobilenet_v2_int8",
    "mobilenet_v2_depth",
    "mobilenet_v2_depth_more",
    "mobilenet_v2_depth_more_int8",
)
BEGIN, END = "<!-- fashion_mnist_64:begin -->", "<!-- fashion_mnist_64:end -->"


def label(key: str) -> str:
    return LABELS.get(key, key)


def _ms(row: dict | None, runtime: str) -> float | None:
    return None if row is None else row.get(f"{runtime}_ms")


def _f(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{format(v, spec)}{suffix}"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Keys of the points no other point beats on both latency (lower) and top-1 (higher),
    fastest first."""
    front = [
        k
        for k, (ms, acc) in points.items()
        if not any(
            (o_ms <= ms and o_acc >= acc) and (o_ms < ms or o_acc > acc)
            for o, (o_ms, o_acc) in points.items()
            if o != k
        )
    ]
    return sorted(front, key=lambda k: points[k][0])


def _speed(results: dict, size: int) -> dict:
    """The speed run's rows at ``size``, without the models whose architecture changed
    after it (:func:`rebuilt`): their rows timed another network."""
    rows = results.get("speed", {}).get("sizes", {}).get(str(size), {})
    gone = rebuilt(results)
    return {k: row for k, row in rows.items() if k not in gone}


def _applied(plan: dict) -> list:
    """A slimmed directory's architecture: the entries applied, with their geometry."""
    applied = set(plan.get("applied", []))
    return [(e["id"], e["geometry"]) for e in plan["entries"] if e["id"] in applied]


def rebuilt(results: dict) -> set[str]:
    """Keys recorded after the speed run whose network is not the one it timed: a slimmed
    directory whose applied plan differs from its plan at the speed run's commit, and the
    int8 models made from one. Weights files (the teacher, the references) keep theirs."""
    speed = results.get("speed")
    if not speed or "commit" not in speed:
        return set()
    commit = speed["commit"].removesuffix("+dirty")
    timed = {k for rows in speed.get("sizes", {}).values() for k in rows}
    changed = set()
    for key, entry in results["models"].items():
        plan = ROOT / entry.get("path", "") / "plan.json"
        if key not in timed or entry.get("date", "") <= speed["date"] or not plan.is_file():
            continue  # not timed by the speed run (listed as such), or timed as it is
        then = subprocess.run(
            ["git", "show", f"{commit}:{entry['path']}/plan.json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        now = _applied(json.loads(plan.read_text()))
        if then.returncode != 0 or _applied(json.loads(then.stdout)) != now:
            changed.add(key)
    later = {k for k, e in results["models"].items() if e.get("date", "") > speed["date"]}
    return changed | {k for k in later if results["models"][k].get("from") in changed}


def readme_section(results: dict) -> str:
    """The README's results table: accuracy and speed of the same committed artifacts."""
    models = results["models"]
    teacher = models.get("teacher", {}).get("top1_test")
    s64, s224 = _speed(results, 64), _speed(results, 224)
    base64, base224 = _ms(s64.get("teacher"), "ort"), _ms(s224.get("teacher"), "ort")
    lines = [
        "| model | top-1 val % | top-1 test % | vs teacher | ORT ms 64x64 | speed-up | "
        "ORT ms 224x224 | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in (k for k in HEADLINE if k in models):  # in HEADLINE's order
        m = models[key]
        ms64, ms224 = _ms(s64.get(key), "ort"), _ms(s224.get(key), "ort")
        delta = None if teacher is None else m["top1_test"] - teacher
        cells = [
            label(key),
            _f(m["top1_val"], ".2f"),
            _f(m["top1_test"], ".2f"),
            "—" if key == "teacher" or delta is None else f"{delta:+.2f}",
            _f(ms64, ".2f"),
            _f(base64 / ms64 if base64 and ms64 else None, ".2f", "x"),
            _f(ms224, ".2f"),
            _f(base224 / ms224 if base224 and ms224 else None, ".2f", "x"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    speed = results.get("speed")
    where = (
        f"speed: {speed['date'][:10]}, {cpu_label(speed['machine'])}, 1 thread, medians of "
        f"{runs_of(speed)}"
        if speed
        else "speed: not measured yet (`reproduce.py speed`)"
    )
    lines += [
        "",
        "Top-1 on Fashion-MNIST's validation (5,000) and test (10,000) splits, at 64x64; at "
        f"224x224 the same architectures, timed only (not trained at that size); {where}. "
        f"All {len(s64) or len(models)} timed models, with ExecuTorch and eager times, memory "
        "and MACs: "
        "[benchmarks/results/fashion_mnist_64.md](benchmarks/results/fashion_mnist_64.md).",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    block = f"{BEGIN}\n{section}\n{END}"
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda _: block, text))
        return
    # The first time: the block goes at the top of the README's results.
    heading = re.search(r"^## Results\n", text, re.M)
    if heading is None:
        raise SystemExit(f"{readme} has neither a {BEGIN} block nor a '## Results' heading")
    at = heading.end()
    readme.write_text(f"{text[:at]}\n{block}\n{text[at:]}")


def readme_results(readme: Path) -> str | None:
    """What the README's results section holds now (None: it has none)."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), readme.read_text(), re.S)
    return match.group(1) if match else None


def runs_of(speed: dict) -> str:
    """How the speed step timed each model."""
    sessions = speed.get("sessions", 1)
    beside = speed.get("beside")
    runs = (
        f"{speed['runs']} runs interleaved with the {beside}'s (each model in a pair with it, "
        "scaled by its median over the pairs)"
        if beside
        else f"{speed['runs']} interleaved runs of every model (caches cold: each runs after "
        "the others)"
    )
    if sessions == 1:
        return runs
    return f"{runs}, in each of {sessions} sessions (ORT, ExecuTorch: the median of the sessions' medians)"


def paper_table(results: dict) -> str:
    """The paper's table at each size: latency (every runtime), memory, MACs, parameters,
    and (at the trained size) top-1 of the same artifacts."""
    speed = results.get("speed")
    lines = ["# The paper's table, on Fashion-MNIST at 64x64", ""]
    if not speed:
        return "\n".join([*lines, "Speed not measured yet: `reproduce.py speed`.", ""])
    m = speed["machine"]
    lines += [
        f"`{speed['command']}` — {speed['date']}, {cpu_label(m)}, {m['cores']} cores, torch "
        f"{m['torch']}, onnxruntime {m['onnxruntime']}. 1 thread, batch 1, "
        f"{runs_of(speed)} per runtime; speed-ups against the teacher in the same run. "
        "int8 is ONNX Runtime's static quantization in ORT and the XNNPACK quantizer's program "
        "in ExecuTorch; int8 models have no eager time, and their memory, MACs and parameters "
        "are their float twin's.",
        "",
    ]
    gone = rebuilt(results)
    for size in speed["sizes"]:
        rows, trained = _speed(results, int(size)), size == "64"
        title = (
            "the committed models; top-1 on the validation and test splits"
            if trained
            else "speed only: the same architectures at the paper's input size (slimmed models "
            "re-planned at 224 from the teacher, Tucker at the committed ranks), not tuned"
        )
        lines += [f"## {size}x{size}: {title}", ""]
        et = any("executorch_ms" in row for row in rows.values())
        head = "| model | PyTorch ms | speed-up | ORT ms | speed-up |"
        head += " ExecuTorch ms | speed-up |" if et else ""
        head += " memory MB | MMACs | params M |"
        sep = "|---|" + "---:|" * (head.count("|") - 2)
        if trained:
            head, sep = head + " top-1 val % | top-1 test % |", sep + "---:|---:|"
        lines += [head, sep]
        base = rows.get("teacher", {})
        for key, row in rows.items():
            twin = rows.get(key.removesuffix("_int8"), {})
            costs = row if "macs" in row else twin
            cells = [
                label(key),
                _f(row.get("torch_ms"), ".2f"),
                _f(base["torch_ms"] / row["torch_ms"] if "torch_ms" in row else None, ".2f", "x"),
                _f(row["ort_ms"], ".2f"),
                _f(base["ort_ms"] / row["ort_ms"], ".2f", "x"),
            ]
            if et:
                ms = row.get("executorch_ms")
                cells += [_f(ms, ".2f"), _f(base["executorch_ms"] / ms if ms else None, ".2f", "x")]
            cells += [
                _f(costs.get("peak_activation_mb"), ".2f"),
                _f(costs["macs"] / 1e6 if "macs" in costs else None, ".1f"),
                _f(costs["params"] / 1e6 if "params" in costs else None, ".2f"),
            ]
            if trained:
                acc = results["models"].get(key, {})
                cells += [_f(acc.get("top1_val"), ".2f"), _f(acc.get("top1_test"), ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        models = results["models"]
        retrained = [k for k in rows if models.get(k, {}).get("date", "") > speed["date"]]
        if trained and retrained:
            lines += [
                "Tuned again since this speed run, same architecture (timed then; the weights "
                "do not change the latency): " + "; ".join(label(k) for k in retrained) + ".",
                "",
            ]
        if trained and gone:
            lines += [
                "Rebuilt since this speed run, another architecture, not timed yet "
                "(`reproduce.py speed --force`): "
                + "; ".join(label(k) for k in sorted(gone))
                + ".",
                "",
            ]

        def files_at(entry: dict) -> str:
            commit = entry["files_at_commit"]
            return f"files at {commit[:10]}" if commit else "files not kept"

        dropped = [k for k in rows if models.get(k, {}).get("files_at_commit")]
        if trained and dropped:
            lines += [
                "Rows whose files are no longer in benchmarks/weights (kept out of clones; "
                "`git checkout COMMIT -- benchmarks/weights/fashion_mnist_64/KEY` brings them "
                "back): " + "; ".join(f"{label(k)} ({files_at(models[k])})" for k in dropped) + ".",
                "",
            ]
        kept = [k for k in models if k not in rows and "files_at_commit" in models[k]]
        if trained and kept:
            lines += [
                "Earlier runs, replaced and kept for comparison (their architecture is timed "
                "above; their files are in the commit named): "
                + "; ".join(
                    f"{label(k)} (top-1 val {models[k]['top1_val']:.2f}%, test "
                    f"{models[k]['top1_test']:.2f}%; {files_at(models[k])})"
                    for k in kept
                )
                + ".",
                "",
            ]
        untimed = [k for k in models if k not in rows and k not in kept]
        if trained and untimed:
            lines += [
                "Trained since this speed run, not timed yet (`reproduce.py speed --force`): "
                + "; ".join(
                    f"{label(k)} (top-1 val {results['models'][k]['top1_val']:.2f}%, "
                    f"test {results['models'][k]['top1_test']:.2f}%)"
                    for k in untimed
                )
                + ".",
                "",
            ]
    lines += cost_lines(results)
    return "\n".join(lines)


def trained_from(results: dict, entry: dict) -> str | None:
    """The results key of the model a student was built on: the student whose tuned
    weights its recipe continues (``tune.start_from``), else the entry whose weights its
    ``model.checkpoint`` names, or whose slimmed directory its ``model.name`` is (None
    without a recipe)."""
    recipe = ROOT / entry.get("recipe", "")
    if not entry.get("recipe") or not recipe.is_file():
        return None
    keys = tomllib.loads(recipe.read_text())
    model = keys.get("model", {})
    path = keys.get("tune", {}).get("start_from") or model.get("checkpoint") or model.get("name")
    # the model now at that path, not an earlier run kept under another key
    found = [k for k, m in results["models"].items() if m.get("path") == path]
    return next((k for k in found if "files_at_commit" not in results["models"][k]), None)


def training_passes(entry: dict) -> int:
    """Passes over the training split a reference's training took (distillation included)."""
    return entry["epochs"] + entry.get("distill_epochs", 0)


def share_of_training(results: dict, entry: dict, passes: float) -> tuple[str, float] | None:
    """``passes`` of tuning, plus those of the students it was built on (slimmed + Tucker-2
    starts from the slimmed model), as a share of the training of the reference at the root:
    (its key, the share); None when that model is not known."""
    source, seen = trained_from(results, entry), set()
    while source is not None and "epochs" not in results["models"][source]:
        built_on = results["models"][source]
        if source in seen or "cost" not in built_on:
            return None
        seen.add(source)
        passes += built_on["cost"]["passes"]
        source = trained_from(results, built_on)
    if source is None:
        return None
    return source, passes / training_passes(results["models"][source])


def cost_lines(results: dict) -> list[str]:
    """What each student's tuning cost: minutes, passes over the training data, and a share
    of what training the model it was slimmed from took, in passes (machine-free; minutes
    were measured on different machines)."""
    rows = []
    for key, entry in results["models"].items():
        cost = entry.get("cost")
        if not cost:
            continue
        share = share_of_training(results, entry, cost["passes"])
        source = (
            f"{label(share[0])}, {training_passes(results['models'][share[0]])}" if share else "—"
        )
        rows.append(
            f"| {label(key)} | {cost['minutes']:.0f} | {cost['passes']:.2f} | {source} "
            f"| {_f(share[1] if share else None, '.2f')} |"
        )
    if not rows:
        return []
    return [
        "## What tuning cost",
        "",
        "Each student's tuning (stages, linearization, the learning rate's choice, the "
        "fine-tune) in minutes on the machine of its run, in passes over the 55,000 "
        "training images, and as a share of the passes that trained the model it was "
        "slimmed from (with those of the student it was built on, if any; the target: at "
        "most half).",
        "",
        "| student | minutes | passes | trained from, passes | share |",
        "|---|---:|---:|---|---:|",
        *rows,
        "",
    ]


def plot_pareto(results: dict, path: Path) -> Path | None:
    """Test top-1 against ORT latency at 64x64, with the Pareto front drawn."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deeprebirth.profiling.plot import save_figure

    rows = _speed(results, 64)
    points = {
        k: (rows[k]["ort_ms"], m["top1_test"]) for k, m in results["models"].items() if k in rows
    }
    if not points:
        return None
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, (ms, acc) in points.items():
        ours = key.startswith(("teacher", "slimmed"))
        ax.scatter(ms, acc, s=45, marker="o" if ours else "s", color="C0" if ours else "C1")
        ax.annotate(label(key), (ms, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    xs, ys = zip(*(points[k] for k in front), strict=True)
    ax.step(xs, ys, where="post", color="gray", lw=1, ls="--", label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("ONNX Runtime latency at 64x64, 1 thread (ms, median; log scale)")
    ax.set_ylabel("top-1 on the test split (%)")
    ax.set_title("Fashion-MNIST 64x64: accuracy against latency")
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path, dpi=110)
