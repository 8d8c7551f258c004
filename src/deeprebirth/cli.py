"""The ``deeprebirth`` command line: it parses arguments and prints; the work is in
:mod:`deeprebirth.pipeline` and the library.

Flags are recipe keys wherever the recipe has one (the tables in :mod:`deeprebirth.flags`),
and ``slim`` builds a recipe and runs the same pipeline as ``deeprebirth run RECIPE.toml``.
Bad input is one line on stderr and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__, pipeline
from .commands import bench_pair, evaluate_split, export_one
from .config import ConfigError
from .data import SPLITS, get_dataset, num_classes_of
from .errors import DeepRebirthError
from .files import write_json
from .flags import (
    COMPRESSION_FLAGS,
    EXPORT_FLAGS,
    MODEL_FLAGS,
    PROFILE_FLAGS,
    SLIM_FLAGS,
    add_keys,
    command_recipe,
    field_help,
    flag_names,
    positive_int,
    recipe_from_args,
)
from .pipeline import DEMO_RECIPE, demo_recipe
from .profiling import plot_profile
from .profiling.bench import bench
from .recipe import Recipe
from .report.console import ConsoleHooks
from .report.tables import bench_table, plan_table
from .zoo import list_models, model_meta

console = Console(stderr=True)
# Tables go to stdout; when piped, give them room instead of rich's 80 columns.
out = Console() if Console().is_terminal else Console(width=120)
printer = ConsoleHooks(console, out)
_log, _note = printer.log, printer.note


def _command() -> str:
    return " ".join(["deeprebirth", *sys.argv[1:]])


# --- what the pipeline shows ------------------------------------------------------------


def run_recipe(recipe) -> int:
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
    table = Table(
        title="models (`deeprebirth profile NAME`; also timm:NAME, own models: "
        "package.module:factory)"
    )
    for col in ("name", "source", "input"):
        table.add_column(col)
    for name in list_models(args.pattern):
        meta = model_meta(name)
        table.add_row(name, meta.get("paper", meta.get("source", "")), str(meta["input_size"]))
    out.print(table)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:

    recipe = command_recipe(args, **{"profile.enabled": True})
    recipe.check()
    pipeline.check(recipe)  # before any work
    model, spec = pipeline.load_model(recipe.model, "deeprebirth profile")
    result = pipeline.profile_step(recipe, model, spec, printer.hooks(), _command())
    if args.json:
        _log(f"wrote {write_json(args.json, result)}")
    if args.plot:
        _log(f"wrote {plot_profile(result, args.plot)}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    for split in SPLITS:
        ds = get_dataset(args.spec, split, input_size=args.input_size, in_chans=args.in_chans)
        x, _ = ds[0]
        out.print(
            f"{split}: {len(ds)} images, {num_classes_of(ds)} classes, tensor shape {tuple(x.shape)}"
        )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:

    recipe = command_recipe(args)
    model, spec = pipeline.load_model(recipe.model, "deeprebirth plan")
    _log(f"tracing {spec.name} and finding merges at {spec.input_size}x{spec.input_size}")
    plan = pipeline.plan_for(recipe, model, spec, _log)
    out.print(plan_table(plan))
    if args.output:
        _log(f"wrote {plan.save(args.output)} (edit `enabled` or geometry, pass back with --plan)")
    return 0


def cmd_slim(args: argparse.Namespace) -> int:
    return run_recipe(recipe_from_args(args))


def cmd_run(args: argparse.Namespace) -> int:

    return run_recipe(Recipe.load(args.recipe, args.set or []))


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end, as recipes/demo.toml says."""

    out = [f"out={str(args.out)!r}"] if args.out else []
    recipe, why = demo_recipe(args.recipe, [*(args.set or []), *out])
    if why:
        _note(why)
    code = run_recipe(recipe)
    console.print(f"demo done: the report is {Path(recipe.out) / 'report.md'}")
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:

    spec = command_recipe(args).model
    with printer.counting(f"evaluating {spec.name}") as progress:
        r = evaluate_split(spec, args.data, args.split, args.batch_size, progress)
    printer.show("evaluation", r)
    if args.json:
        _log(f"wrote {write_json(args.json, r)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    export_one(command_recipe(args, **{"export.formats": ["onnx"]}), args.output, printer.hooks())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:

    t = command_recipe(args, **{"model.name": "-"}).profile
    asked = t.runtimes if hasattr(args, "profile.runtimes") else None  # --runtime given
    a, b, shape, runtimes = bench_pair(args.a, args.b, args.input_size, asked, log=_log)
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


MODEL_KINDS = (
    "zoo name, timm:NAME, slimmed directory, weights file from deeprebirth, or .onnx/.pte file"
)


def build_parser() -> argparse.ArgumentParser:

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
SPLIT_HELP = "val: held out of the training set, for choosing; test (default): for reporting"


def main(argv: list[str] | None = None) -> int:

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
