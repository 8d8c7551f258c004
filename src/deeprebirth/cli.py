"""The ``deeprebirth`` command line: it parses arguments and prints; the work is in
:mod:`deeprebirth.pipeline` and the library.

Flags are recipe keys (:mod:`deeprebirth.recipe`) wherever the recipe has one: each such
flag is a row of a table below (flag, key, argparse options), its help and default come
from the recipe, and ``slim`` builds a recipe and runs the same pipeline as
``deeprebirth run RECIPE.toml``. Bad input is one line on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import DeepRebirthError
from .report.console import ConsoleHooks

console = Console(stderr=True)
# Tables go to stdout; when piped, give them room instead of rich's 80 columns.
out = Console() if Console().is_terminal else Console(width=120)
printer = ConsoleHooks(console, out)
_log, _note = printer.log, printer.note


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


def recipe_from_args(args: argparse.Namespace, **fixed):
    """The recipe the flags describe (every flag given is a key, ``fixed`` are keys the
    command sets; the rest are defaults)."""
    from .config import nest
    from .recipe import Recipe

    given = {**fixed, **vars(args)}
    given = {k: v for k, v in given.items() if "." in k or k in ("out", "fp16_weights")}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    return Recipe.from_dict(nest(given))


def command_recipe(args: argparse.Namespace, **fixed):
    """The recipe of a one-step command (profile, plan, export, evaluate): no output
    directory, no report."""
    return recipe_from_args(args, out="-", **{"report.enabled": False, **fixed})


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
PROFILE_FLAGS = (
    ("--runtime", "profile.runtimes", {"type": parse_runtimes, "metavar": "LIST"}),
    ("--threads", "profile.threads", POSITIVE),
    ("--batch", "profile.batch", POSITIVE),
    ("--runs", "profile.runs", POSITIVE),
)
EXPORT_FLAGS = (
    (
        "--format",
        "export.formats",
        {
            "type": lambda text: [text],
            "help": "onnx (default), executorch (a .pte program for XNNPACK, the phone "
            "runtime) or torchscript (deprecated upstream)",
        },
    ),
    ("--data", "data.spec", {"help": "real images: the parity check and int8 calibration"}),
    ("--int8", "export.int8", ON | {"help": "write an int8 model (needs --data)"}),
    ("--int8-format", "export.int8_format", {}),
    ("--calibration-images", "export.calibration_images", POSITIVE),
)


def add_keys(group, flags) -> None:
    for flag, key, options in flags:
        key_arg(group, flag, key=key, **options)


# --- what the pipeline shows ------------------------------------------------------------


def run_recipe(recipe) -> int:
    import os

    from . import pipeline

    console.quiet = out.quiet = int(os.environ.get("RANK", "0")) != 0  # torchrun: rank 0 prints
    r = pipeline.run(recipe, printer.hooks(), command=_command())
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
    from . import pipeline
    from .files import write_json
    from .profiling import plot_profile

    recipe = command_recipe(args, **{"profile.enabled": True})
    recipe.check()
    pipeline.check(recipe)  # before any work
    model, spec = pipeline.load_model(recipe.model)
    result = pipeline.profile_step(recipe, model, spec, printer.hooks(), _command())
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

    recipe = command_recipe(args)
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
    from .files import write_json
    from .pipeline import evaluate_split

    spec = command_recipe(args).model
    with printer.counting(f"evaluating {spec.name}") as progress:
        r = evaluate_split(spec, args.data, args.split, args.batch_size, progress)
    printer.show("evaluation", r)
    if args.json:
        _log(f"wrote {write_json(args.json, r)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .pipeline import export_one

    export_one(command_recipe(args, **{"export.formats": ["onnx"]}), args.output, printer.hooks())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .files import write_json
    from .pipeline import bench_pair
    from .profiling.bench import bench
    from .report.tables import bench_table

    t = command_recipe(args, **{"model.name": "-"}).profile
    a, b, shape, runtimes = bench_pair(args.a, args.b, args.input_size, t.runtimes, log=_log)
    shape = [t.batch, *shape[1:]]
    labels = (args.a, args.b)
    r = bench(
        a,
        b,
        input_shape=shape,
        runtimes=runtimes,
        threads=t.threads,
        runs=t.runs,
        labels=labels,
        log=_log,
    )
    r["command"] = _command()
    out.print(bench_table(r, args.a, args.b, shape, t.threads, t.runs))
    if args.json:
        _log(f"wrote {write_json(args.json, r)}")
    return 0


# --- the parser ----------------------------------------------------------------------------


MODEL_KINDS = "zoo name, slimmed directory, weights file from deeprebirth, or .onnx/.pte file"


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import DEMO_RECIPE

    parser = argparse.ArgumentParser(
        prog="deeprebirth",
        description="Profile CNNs and merge away their non-tensor layers (DeepRebirth).",
    )
    parser.add_argument("--version", action="version", version=f"deeprebirth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help: str, model: str = "") -> argparse.ArgumentParser:
        """A subcommand; ``model``: it takes a model (these kinds), and MODEL_FLAGS."""
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        if model:
            p.add_argument("model.name", metavar="model", help=model)
            add_keys(p, MODEL_FLAGS)
        return p

    zoo = field_help("model.name")

    def json_flag(p, what: str = "the result") -> None:
        p.add_argument("--json", type=Path, help=f"write {what} as JSON")

    p = command("models", cmd_models, "list the models the zoo knows")
    p.add_argument("pattern", nargs="?", help="only names containing this")

    p = command("profile", cmd_profile, "where inference time goes, per layer kind", model=zoo)
    add_keys(p, (*PROFILE_FLAGS, ("--top", "profile.top", {"type": int})))
    json_flag(p)
    p.add_argument("--plot", type=Path, help="write a bar chart (PNG) of time per layer kind")

    p = command("plan", cmd_plan, "find the merges (streamline, branch, exact)", model=zoo)
    p.add_argument("-o", "--output", type=Path, help="write the plan as JSON (editable)")
    add_keys(p, COMPRESSION_FLAGS)

    help = "plan, slim, tune, evaluate and report (a recipe made of flags)"
    p = command("slim", cmd_slim, help, model=zoo)
    add_keys(p, COMPRESSION_FLAGS)
    p.add_argument("--out", required=True, help="output directory")
    for title, flags in SLIM_FLAGS.items():
        add_keys(p.add_argument_group(title) if title else p, flags)

    p = command("run", cmd_run, "run a recipe (TOML): the whole pipeline, as `slim` does")
    p.add_argument("recipe", type=Path, help="a recipe file (keys: docs/recipes.md)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)

    help = "export to ONNX, ExecuTorch or TorchScript, checked against PyTorch"
    p = command("export", cmd_export, help, model=zoo)
    p.add_argument("-o", "--output", type=Path, required=True, help="output file")
    add_keys(p, EXPORT_FLAGS)

    help = "top-1/top-5 on a data set's test (or val) split"
    p = command("evaluate", cmd_evaluate, help, model=MODEL_KINDS)
    p.add_argument("--data", required=True, help="fashion-mnist, an ImageFolder, or synthetic")
    p.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    p.add_argument("--split", choices=SPLITS, default="test", help=SPLIT_HELP)
    json_flag(p, "{top1, top5, n} (fractions)")

    p = command("bench", cmd_bench, "two models side by side: latency, memory, MACs")
    p.add_argument("a", help=f"the baseline: {MODEL_KINDS}")
    p.add_argument("b", help="the other model, of the same kinds")
    p.add_argument("--input-size", type=positive_int, help="for zoo models (default: theirs)")
    add_keys(p, PROFILE_FLAGS)
    json_flag(p)

    p = command("data", cmd_data, "check that a data set is found and how it is adapted")
    p.add_argument("spec", help="fashion-mnist, synthetic, or an ImageFolder directory")
    p.add_argument("--input-size", type=positive_int, default=224, help="default 224")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="default 3")

    p = command("demo", cmd_demo, "the main job end to end: recipes/demo.toml")
    p.add_argument("--recipe", type=Path, default=DEMO_RECIPE, help="default recipes/demo.toml")
    p.add_argument("--out", help="output directory (default: the recipe's out, runs/demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    return parser


SET_HELP = "override a recipe key, e.g. tune.max_batches=50 (repeatable)"
SPLITS = ("train", "val", "test")
SPLIT_HELP = "val: held out of the training set, for choosing; test (default): for reporting"


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
