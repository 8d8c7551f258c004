"""The ``deeprebirth`` command line: it parses arguments and prints; the work is in
:mod:`deeprebirth.pipeline` and the library.

``plan``, ``slim`` and ``export`` flags are recipe keys (:mod:`deeprebirth.recipe`): each
flag's help and default come from the recipe, and ``slim`` builds a recipe and runs the
same pipeline as ``deeprebirth run RECIPE.toml``. Bad input is one line on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import DeepRebirthError

console = Console(stderr=True)
# Tables go to stdout; when piped, give them room instead of rich's 80 columns.
out = Console() if Console().is_terminal else Console(width=120)


def _log(msg: str) -> None:
    console.print(f"[dim]… {msg}[/dim]")


def _note(msg: str) -> None:
    console.print(f"[yellow]note:[/yellow] {msg}")


def _command() -> str:
    return " ".join(["deeprebirth", *sys.argv[1:]])


# --- argument types ----------------------------------------------------------------------


def parse_runtimes(text: str) -> list[str]:
    from .profiling import RUNTIMES

    runtimes = [r.strip() for r in text.split(",") if r.strip()]
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        raise argparse.ArgumentTypeError(f"runtimes are a comma list of {', '.join(RUNTIMES)}")
    return runtimes


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def rank_share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {value}")
    return value


# --- flags that are recipe keys ---------------------------------------------------------


def field_help(key: str) -> str:
    from .config import field_of
    from .recipe import Recipe

    return field_of(Recipe, key).metadata.get("help", "")


def key_arg(group, *flags: str, key: str, help: str | None = None, **kwargs) -> None:
    """``flags`` set the recipe key ``key``; help and default come from the recipe."""
    from .config import default_of, field_of
    from .recipe import Recipe

    default = default_of(field_of(Recipe, key))
    if not {"action", "metavar", "choices"} & set(kwargs):
        kwargs["metavar"] = flags[0].lstrip("-").upper().replace("-", "_")
    text = help or field_help(key)
    if help is None and default not in (None, False, [], ""):
        shown = ",".join(default) if isinstance(default, list) else default
        text += f" (default {shown})"
    group.add_argument(*flags, dest=key, default=argparse.SUPPRESS, help=text, **kwargs)


def recipe_from_args(args: argparse.Namespace):
    """The recipe the flags describe (every flag given is a key; the rest are defaults)."""
    from .config import nest
    from .recipe import Recipe

    given = {k: v for k, v in vars(args).items() if "." in k or k in ("out", "fp16_weights")}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    return Recipe.from_dict(nest(given))


def model_spec(args: argparse.Namespace):
    return recipe_from_args(argparse.Namespace(out="-", **vars(args))).model


ON, OFF = {"action": "store_true"}, {"action": "store_false"}
POSITIVE = {"type": positive_int}
# The flags that set recipe keys, by group: (flag, key, argparse options).
MODEL_FLAGS = (
    ("--checkpoint", "model.checkpoint", {}),
    ("--pretrained", "model.pretrained", ON),
    ("--num-classes", "model.num_classes", POSITIVE),
    ("--in-chans", "model.in_chans", POSITIVE),
    ("--input-size", "model.input_size", POSITIVE),
)
COMPRESSION_FLAGS = (
    ("--drop-activations", "plan.drop_activations", ON),
    ("--tucker", "plan.tucker", ON),
    ("--rank-ratio", "plan.rank_ratio", {"type": rank_share}),
    ("--pointwise-rank-ratio", "plan.pointwise_rank_ratio", {"type": rank_share, "metavar": "R"}),
)
SLIM_FLAGS = {
    None: (
        ("--plan", "plan.file", {}),
        ("--exact-only", "plan.exact_only", ON),
        ("--fp16-weights", "fp16_weights", ON),
    ),
    "tuning (layer-wise, against the original; needs --data)": (
        ("--data", "data.spec", {}),
        ("--no-tune", "tune.enabled", OFF | {"help": "skip tuning"}),
        ("--no-eval", "evaluate.enabled", OFF | {"help": "skip the accuracy before and after"}),
        ("--max-batches", "tune.max_batches", POSITIVE),
        ("--epochs-per-stage", "tune.epochs_per_stage", POSITIVE),
        ("--finetune-batches", "tune.finetune_batches", {"type": int}),
        ("--finetune-epochs", "tune.finetune_epochs", POSITIVE),
        ("--finetune-share", "tune.finetune_share", {"type": share}),
        ("--lr", "tune.lr", {"type": float}),
        ("--finetune-lr", "tune.finetune_lr", {"type": float}),
        ("--batch-size", "data.batch_size", POSITIVE),
        ("--budget-minutes", "tune.budget_minutes", {"type": float}),
        ("--labels", "tune.use_labels", ON),
        ("--all-at-once", "tune.all_at_once", ON),
        ("--from-scratch", "tune.reinit", ON),
        ("--resume", "tune.resume", ON),
        ("--device", "tune.device", {}),
    ),
    "plan selection under a latency budget": (
        ("--latency-budget", "select.latency_budget_ms", {"type": float, "metavar": "MS"}),
        ("--runtime", "select.runtime", {"choices": ("ort", "torch")}),
        ("--threads", "select.threads", POSITIVE),
        ("--selection-runs", "select.runs", POSITIVE),
    ),
    "report (DIR/report.md)": (
        (
            "--no-report",
            "report.enabled",
            OFF | {"help": "skip the report (it measures both models)"},
        ),
        ("--report-runs", "report.runs", POSITIVE),
        ("--report-runtimes", "report.runtimes", {"type": parse_runtimes, "metavar": "LIST"}),
        ("--references", "report.references", {"type": comma_list, "metavar": "LIST"}),
    ),
}


def add_keys(group, flags) -> None:
    for flag, key, options in flags:
        key_arg(group, flag, key=key, **options)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model.name", metavar="model", help=field_help("model.name"))
    add_keys(p, MODEL_FLAGS)


def add_slim_args(p: argparse.ArgumentParser) -> None:
    add_keys(p, COMPRESSION_FLAGS)
    p.add_argument("--out", required=True, help="output directory")
    for title, flags in SLIM_FLAGS.items():
        add_keys(p.add_argument_group(title) if title else p, flags)


def add_timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        type=parse_runtimes,
        default=["torch", "ort"],
        help="comma list of runtimes: torch (PyTorch eager), ort (ONNX Runtime), executorch "
        "(ExecuTorch with XNNPACK, the phone runtime: the [mobile] extra); default torch,ort",
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="threads per runtime (default 1)"
    )
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--runs", type=positive_int, default=30, help="timed runs (default 30)")
    p.add_argument("--top", type=int, default=10, help="slowest layers to list (default 10)")


# --- what the pipeline shows -------------------------------------------------------------


def show(what: str, value) -> None:
    from .report.tables import plan_table, selection_summary, selection_table

    if what == "profile":
        from .profiling.console import print_profile

        print_profile(value, out)
    elif what == "plan":
        out.print(plan_table(value))
    elif what == "reverted":
        console.print(f"[yellow]reverted[/yellow] {value[0]}: {value[1]}")
    elif what == "selection":
        out.print(selection_table(value, value.budget_ms, value.runtime))
        out.print(selection_summary(value))
    elif what == "accuracy":
        for who, r in value.items():
            out.print(
                f"{who}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  ({r['n']} "
                f"test images); validation top-1 {100 * r['val_top1']:.2f}%"
            )
    elif what == "reference":
        out.print(f"{value[0]} (reference): top-1 {100 * value[1]['top1']:.2f}%")
    elif what == "export":
        show_export(value)


def show_export(r: dict) -> None:
    if "delegation" in r:
        d = r["delegation"]
        portable = {k: v for k, v in d["portable_ops"].items() if k != "getitem"}
        out.print(
            f"XNNPACK runs {d['delegated_nodes']} operators in {d['delegated_subgraphs']} "
            "subgraph(s); portable kernels run "
            + (", ".join(f"{k} x{v}" for k, v in portable.items()) or "nothing else")
        )
    if r.get("leftover_non_tensor"):
        _note(f"non-tensor layers left in the ONNX graph: {r['leftover_non_tensor']}")
    where = "real" if r["real_inputs"] else "random"
    line = f"exported {r['path']} ({r['what']}); parity with PyTorch on {r['inputs'][0]} {where} inputs: "
    if "top1_agreement" in r:
        line += f"top-1 unchanged on {100 * r['top1_agreement']:.1f}%, "
    out.print(f"{line}error {r['relative_error']:.1e} of the output's scale")


@contextmanager
def tuning_progress(is_main: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    tasks: dict[str, int] = {}
    with Progress(*columns, console=console, disable=not is_main) as bar:

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"tune {stage}", total=total, loss=loss)
            bar.update(tasks[stage], completed=step, loss=loss)

        yield progress


def hooks():
    from .pipeline import Hooks

    return Hooks(log=_log, note=_note, show=show, tuning_progress=tuning_progress)


def run_recipe(recipe) -> int:
    import os

    from . import pipeline

    console.quiet = out.quiet = int(os.environ.get("RANK", "0")) != 0  # torchrun: rank 0 prints
    r = pipeline.run(recipe, hooks(), command=_command())
    if r.report is not None and not console.quiet:
        rep = r.report
        console.print(
            f"slimmed: {len(rep.applied)} merges applied, {len(rep.reverted)} reverted, "
            f"{len(rep.skipped)} skipped -> {r.out_dir}/ (recipe.toml, plan.json, model.safetensors"
            + (", report.md" if recipe.report.enabled else "")
            + ")"
        )
    return 0


# --- subcommands -----------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .zoo import list_models, model_meta

    table = Table(title="models (`deeprebirth profile NAME`; own models: package.module:factory)")
    for col in ("name", "source", "input"):
        table.add_column(col)
    for name in list_models(args.pattern):
        meta = model_meta(name)
        table.add_row(name, meta.get("paper", meta.get("source", "")), str(meta["input_size"]))
    out.print(table)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .files import write_json
    from .pipeline import load_model
    from .profiling import plot_profile, profile
    from .profiling.console import print_profile

    if "executorch" in args.runtime:
        from .export.executorch import require_executorch

        require_executorch()  # before any work
        if args.batch != 1:
            raise DeepRebirthError("ExecuTorch programs run batch 1: use --batch 1")
    model, spec = load_model(model_spec(args))
    result = profile(
        model,
        name=spec.name,
        runtimes=args.runtime,
        threads=args.threads,
        batch=args.batch,
        input_size=spec.input_size,
        in_chans=spec.in_chans,
        runs=args.runs,
        log=_log,
    )
    result["command"] = _command()
    print_profile(result, out, top=args.top)
    if args.json:
        _log(f"wrote {write_json(args.json, result)}")
    if args.plot:
        _log(f"wrote {plot_profile(result, args.plot)}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import SPLITS, get_dataset, num_classes_of

    for split in SPLITS:
        ds = get_dataset(args.spec, split, input_size=args.input_size, in_chans=args.in_chans)
        x, _ = ds[0]
        out.print(
            f"{split}: {len(ds)} images, {num_classes_of(ds)} classes, tensor shape {tuple(x.shape)}"
        )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from . import pipeline
    from .report.tables import plan_table

    recipe = recipe_from_args(argparse.Namespace(out="-", **vars(args)))
    model, spec = pipeline.load_model(recipe.model)
    _log(f"tracing {spec.name} and finding merges at {spec.input_size}x{spec.input_size}")
    plan = pipeline.make_plan(recipe, model, spec)
    out.print(plan_table(plan))
    if args.output:
        _log(f"wrote {plan.save(args.output)} (edit `enabled` or geometry, pass back with --plan)")
    return 0


def cmd_slim(args: argparse.Namespace) -> int:
    return run_recipe(recipe_from_args(args))


def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import Recipe

    return run_recipe(Recipe.load(args.recipe, args.set or []))


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end, as recipes/demo.toml says."""
    from .pipeline import demo_recipe

    out = [f"out={str(args.out)!r}"] if args.out else []
    recipe, why = demo_recipe(args.recipe, [*(args.set or []), *out])
    if why:
        _note(why)
    code = run_recipe(recipe)
    console.print(f"demo done: the report is {Path(recipe.out) / 'report.md'}")
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .data import get_dataset, get_loader, num_classes_of
    from .evaluation import evaluate
    from .pipeline import load_for_evaluate
    from .recipe import ModelConfig

    config = {k: getattr(args, k) for k in ("num_classes", "in_chans", "input_size")}
    spec = ModelConfig(
        name=args.model, checkpoint=args.checkpoint and str(args.checkpoint), **config
    )
    model, input_size, in_chans = load_for_evaluate(spec)
    input_size = args.input_size or input_size
    ds = get_dataset(args.data, args.split, input_size=input_size, in_chans=in_chans)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"evaluating {args.model}", total=len(ds))
        r = evaluate(
            model, get_loader(ds, args.batch_size), on_batch=lambda n: bar.advance(task, n)
        )
    if (classes := num_classes_of(ds)) is not None:
        r["classes"] = classes
    r["model"], r["data"], r["split"] = args.model, args.data, args.split
    out.print(
        f"{args.model} on {args.data} ({args.split}): top-1 {100 * r['top1']:.2f}%  "
        f"top-5 {100 * r['top5']:.2f}%  ({r['n']} images)"
    )
    if args.json:
        from .files import write_json

        _log(f"wrote {write_json(args.json, r)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import pipeline
    from .export import export, export_executorch, export_int8

    if args.int8 and (args.format == "torchscript" or not args.data):
        raise DeepRebirthError(
            "--int8 needs --format onnx or executorch, and --data (calibration images)"
        )
    if args.format == "executorch":
        from .export.executorch import require_executorch

        require_executorch()  # before any work
    model, spec = pipeline.load_model(model_spec(args))
    inputs = pipeline.check_inputs(args.data, spec, 64 if args.int8 else 8)
    fmt = args.format
    if args.int8:
        batches = pipeline.calibration_batches(args.data, spec, args.calibration_images)
        _log(f"calibrating int8 ranges on {sum(len(b) for b in batches)} training images")
        if fmt == "executorch":
            r = export_executorch(model, args.output, inputs, batches)
        else:
            r = export_int8(model, args.output, inputs, batches, args.int8_format)
        what = pipeline.describe_export(fmt, int8=args.int8_format)
    else:
        r, what = export(model, args.output, fmt, inputs), pipeline.describe_export(fmt)
    show_export({**r, "path": str(args.output), "what": what, "real_inputs": bool(args.data)})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .files import write_json
    from .pipeline import bench_pair
    from .profiling.bench import bench
    from .report.tables import bench_table

    a, b, shape, runtimes = bench_pair(args.a, args.b, args.input_size, args.runtime, log=_log)
    shape = [args.batch, *shape[1:]]
    r = bench(
        a,
        b,
        input_shape=shape,
        runtimes=runtimes,
        threads=args.threads,
        runs=args.runs,
        labels=(args.a, args.b),
        log=_log,
    )
    r["command"] = _command()
    out.print(bench_table(r, args.a, args.b, shape, args.threads, args.runs))
    if args.json:
        _log(f"wrote {write_json(args.json, r)}")
    return 0


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .export.int8 import DEFAULT_INT8_FORMAT, INT8_FORMATS

    parser = argparse.ArgumentParser(
        prog="deeprebirth",
        description="Profile CNNs and merge away their non-tensor layers (DeepRebirth).",
    )
    parser.add_argument("--version", action="version", version=f"deeprebirth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the models the zoo knows")
    p.add_argument("pattern", nargs="?", help="only names containing this")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "profile", help="where inference time goes, per layer and layer kind, per runtime"
    )
    add_model_args(p)
    add_timing_args(p)
    p.add_argument("--json", type=Path, help="write the full result as JSON")
    p.add_argument("--plot", type=Path, help="write a bar chart (PNG) of time per layer kind")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("plan", help="find the merges (streamline, branch, exact) in a model")
    add_model_args(p)
    p.add_argument("-o", "--output", type=Path, help="write the plan as JSON (editable)")
    add_keys(p, COMPRESSION_FLAGS)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "slim", help="plan, slim, tune, evaluate and report (a recipe made of flags)"
    )
    add_model_args(p)
    add_slim_args(p)
    p.set_defaults(func=cmd_slim)

    p = sub.add_parser("run", help="run a recipe (TOML): the whole pipeline, as `slim` does")
    p.add_argument("recipe", type=Path, help="a recipe file (keys: docs/recipes.md)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a key, e.g. tune.max_batches=50 (repeatable)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "export", help="export to ONNX, ExecuTorch or TorchScript, checked against PyTorch"
    )
    add_model_args(p)
    p.add_argument(
        "--format",
        choices=("onnx", "executorch", "torchscript"),
        default="onnx",
        help="onnx (default), executorch (a .pte program for XNNPACK, the phone runtime) or "
        "torchscript (deprecated upstream)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output file")
    p.add_argument(
        "--data", help="real images from this data set: the parity check, int8 calibration"
    )
    q = p.add_argument_group(
        "int8 (ONNX Runtime static quantization, or the XNNPACK quantizer for executorch; needs --data)"
    )
    q.add_argument("--int8", action="store_true", help="write an int8 model")
    q.add_argument(
        "--int8-format",
        choices=tuple(INT8_FORMATS),
        default=DEFAULT_INT8_FORMAT,
        help=f"ONNX: QDQ pairs or quantized operators (default {DEFAULT_INT8_FORMAT})",
    )
    q.add_argument(
        "--calibration-images",
        type=positive_int,
        default=512,
        help="training images that fix the activation ranges (default 512)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="top-1/top-5 on a data set's test (or val) split")
    p.add_argument(
        "model",
        help="zoo name, slimmed directory, weights file from deeprebirth, or .onnx file (run in ONNX Runtime)",
    )
    p.add_argument(
        "--data", required=True, help="fashion-mnist, an ImageFolder directory, or synthetic"
    )
    p.add_argument("--checkpoint", type=Path, help="weights for a zoo model")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--input-size", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="test",
        help="val: held out of the training set, for choosing; test (default): for reporting",
    )
    p.add_argument("--json", type=Path, help="write {top1, top5, n} (fractions) as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="two models side by side: latency, memory, MACs")
    p.add_argument(
        "a", help="zoo name, slimmed directory, weights file or .onnx file (the baseline)"
    )
    p.add_argument("b", help="zoo name, slimmed directory, weights file or .onnx file")
    p.add_argument(
        "--input-size", type=positive_int, help="input size for zoo models (default: theirs)"
    )
    add_timing_args(p)
    p.add_argument("--json", type=Path, help="write the result as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="check that a data set is found and how it is adapted")
    p.add_argument("spec", help="fashion-mnist, synthetic, or an ImageFolder directory")
    p.add_argument("--input-size", type=positive_int, default=224, help="resize to (default 224)")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="channels (default 3)")
    p.set_defaults(func=cmd_data)

    from .pipeline import DEMO_RECIPE

    p = sub.add_parser("demo", help="the main job end to end: recipes/demo.toml")
    p.add_argument(
        "--recipe",
        type=Path,
        default=DEMO_RECIPE,
        help="the demo's recipe (default recipes/demo.toml)",
    )
    p.add_argument("--out", help="output directory (default: the recipe's out, runs/demo)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Recipe key -> flag, to name flags (not keys) in errors about a command's flags."""
    names = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names.update(flag_names(sub))
        elif "." in action.dest and action.option_strings:
            names.setdefault(action.dest, action.option_strings[0])
    return names


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except DeepRebirthError as e:
        if args.debug:
            raise
        msg = str(e)
        if isinstance(e, ConfigError) and args.command != "run":  # the user gave flags
            for key, flag in sorted(flag_names(parser).items(), key=lambda kv: -len(kv[0])):
                msg = msg.replace(key, flag)
        console.print(f"[red]deeprebirth: error:[/red] {msg}", highlight=False, soft_wrap=True)
        return 2
    except Exception as e:
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        console.print(
            f"[red]deeprebirth: internal error:[/red] {type(e).__name__}: {first} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
