"""The ``deeprebirth`` command line.

Every subcommand reports bad input as one line on stderr and exits non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import DeepRebirthError

console = Console(stderr=True)
# Tables go to stdout; when piped, give them room instead of rich's 80 columns.
out = Console() if Console().is_terminal else Console(width=120)


def _log(msg: str) -> None:
    console.print(f"[dim]… {msg}[/dim]")


# --- shared arguments ----------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="zoo name (see `deeprebirth models`), package.module:factory, or a slimmed directory",
    )
    p.add_argument("--checkpoint", type=Path, help="weights: .safetensors or a PyTorch state dict")
    p.add_argument(
        "--pretrained", action="store_true", help="torchvision weights from the local cache only"
    )
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--in-chans", type=int, help="input channels (default: the model's)")
    p.add_argument("--input-size", type=int, help="input height and width (default: the model's)")


def load_model_from_args(args: argparse.Namespace):
    """Build the model the arguments name; returns (model, input_size, in_chans)."""
    from .slimming import input_shape_of, is_slimmed_dir, load
    from .zoo import get_model, model_meta

    if is_slimmed_dir(args.model):
        _, in_chans, size, _ = input_shape_of(args.model)
        return load(args.model), size, in_chans
    meta = model_meta(args.model)
    if (
        args.checkpoint is not None
        and args.checkpoint.suffix == ".safetensors"
        and args.checkpoint.is_file()
    ):
        from .evaluation import weights_meta

        saved = weights_meta(args.checkpoint)  # files from save_weights describe their model
        for key in ("num_classes", "in_chans", "input_size"):
            if getattr(args, key, None) is None and key in saved:
                setattr(args, key, int(saved[key]))
    config = {}
    if args.num_classes is not None:
        config["num_classes"] = args.num_classes
    if args.in_chans is not None:
        config["in_chans"] = args.in_chans
    model = get_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, **config)
    in_chans = args.in_chans or meta["in_chans"]
    return model, args.input_size or meta["input_size"], in_chans


def parse_runtimes(text: str) -> list[str]:
    from .profiling import RUNTIMES

    runtimes = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise argparse.ArgumentTypeError(f"runtimes are a comma list of {', '.join(RUNTIMES)}")
    return runtimes


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


def run_profile(
    args: argparse.Namespace, model, input_size: int, in_chans: int, json_path, plot_path
) -> dict:
    from .files import write_json
    from .profiling import plot_profile, profile
    from .profiling.console import print_profile

    result = profile(
        model,
        name=args.model,
        runtimes=args.runtime,
        threads=args.threads,
        batch=args.batch,
        input_size=input_size,
        in_chans=in_chans,
        runs=args.runs,
        log=_log,
    )
    result["command"] = " ".join(["deeprebirth", *sys.argv[1:]])
    print_profile(result, out, top=args.top)
    if json_path:
        _log(f"wrote {write_json(json_path, result)}")
    if plot_path:
        _log(f"wrote {plot_profile(result, plot_path)}")
    return result


def cmd_profile(args: argparse.Namespace) -> int:
    if "executorch" in args.runtime:
        from .export.executorch import require_executorch

        require_executorch()  # before any work
        if args.batch != 1:
            raise DeepRebirthError("ExecuTorch programs run batch 1: use --batch 1")
    model, input_size, in_chans = load_model_from_args(args)
    run_profile(args, model, input_size, in_chans, args.json, args.plot)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import SPLITS, get_dataset, num_classes_of

    for split in SPLITS:
        ds = get_dataset(args.spec, split, input_size=args.input_size, in_chans=args.in_chans)
        x, _ = ds[0]
        classes = num_classes_of(ds)
        out.print(f"{split}: {len(ds)} images, {classes} classes, tensor shape {tuple(x.shape)}")
    return 0


def _model_config(args: argparse.Namespace) -> dict:
    return {k: v for k in ("num_classes", "in_chans") if (v := getattr(args, k, None)) is not None}


def print_plan(plan) -> None:
    from rich.table import Table

    shape = "x".join(map(str, plan.input_shape))
    table = Table(title=f"plan for {plan.model} at {shape}: {len(plan.entries)} merges")
    for col in ("#", "merge", "type", "layers", "new geometry", "MACs saved", "on"):
        table.add_column(col, justify="right" if col in ("#", "MACs saved") else "left")
    for i, e in enumerate(plan.entries):
        g = e.geometry
        if "stride" in g:
            geom = f"k{'x'.join(map(str, g['kernel']))} s{g['stride'][0]} p{g['padding'][0]}"
        elif "heads" in g:
            geom = (
                f"{len(g['heads'])} heads at stride {next(iter(g['heads'].values()))['stride'][0]}"
            )
        else:
            geom = ""
        if e.kind == "fuse_parallel":
            geom = f"{'+'.join(map(str, g['out_channels']))} channels"
        layers = ", ".join(e.nodes) if len(e.nodes) <= 3 else f"{e.nodes[0]} (+{len(e.nodes) - 1})"
        table.add_row(
            str(i),
            e.kind,
            "exact" if e.exact else "learned",
            layers,
            geom,
            f"{e.macs_saved / 1e6:.1f} M",
            "yes" if e.enabled else "no",
        )
    out.print(table)


def cmd_plan(args: argparse.Namespace) -> int:
    from .graph import example_input
    from .plan import make_plan

    check_tucker_args(args)
    model, input_size, in_chans = load_model_from_args(args)
    _log(f"tracing {args.model} and finding merges at {input_size}x{input_size}")
    plan = make_plan(
        model,
        example_input(1, in_chans, input_size),
        name=args.model,
        model_config=_model_config(args),
        tucker=args.tucker,
        rank_ratio=args.rank_ratio,
        pointwise_ratio=args.pointwise_rank_ratio,
        depth=args.drop_activations,
    )
    print_plan(plan)
    if args.output:
        _log(f"wrote {plan.save(args.output)} (edit `enabled` or geometry, pass back with --plan)")
    return 0


def cmd_slim(args: argparse.Namespace) -> int:
    import torch

    from .tuning import distributed

    check_tucker_args(args)
    references = check_references(args)
    if "executorch" in (args.report_runtimes or []) and not args.no_report:
        from .export.executorch import require_executorch

        require_executorch()  # before any tuning
    ctx = distributed.setup(args.device)  # under torchrun: one of N processes
    console.quiet = out.quiet = not ctx.is_main
    from .plan import Plan, PlanError
    from .slimming import save, slim

    plan = None
    if args.plan:
        plan = Plan.load(args.plan)
        if plan.model != args.model:
            raise PlanError(f"{args.plan} is a plan for {plan.model}, not {args.model}")
        for key, value in plan.model_config.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        if args.input_size is None:
            args.input_size = plan.input_shape[2]
    model, input_size, in_chans = load_model_from_args(args)
    selection = None
    if args.latency_budget is not None:
        if plan is not None or args.exact_only:
            raise DeepRebirthError("--latency-budget makes the plan: drop --plan/--exact-only")
        selection = select_for_budget(args, model, input_size, in_chans)
        plan = selection.plan
    _log("planning" if plan is None else f"applying {args.plan or 'the selected plan'}")
    result = slim(
        model,
        plan,
        name=args.model,
        input_size=input_size,
        in_chans=in_chans,
        model_config=_model_config(args),
        exact_only=args.exact_only,
        tucker=args.tucker,
        rank_ratio=args.rank_ratio,
        pointwise_ratio=args.pointwise_rank_ratio,
        depth=args.drop_activations,
    )
    print_plan(result.plan)
    rep = result.report
    for entry_id, why in rep.reverted:
        console.print(f"[yellow]reverted[/yellow] {entry_id}: {why}")
    learned = [e for e in result.plan.entries if not e.exact and e.id in rep.applied]
    if learned and (args.no_tune or not args.data):
        how = "--no-tune" if args.data else "pass --data to tune them"
        console.print(
            f"[yellow]note:[/yellow] {len(learned)} learned merges keep the original weights "
            f"untuned ({how}): the slimmed model is fast but not accurate"
        )
    summary = {}
    if args.data and not args.no_tune and learned:
        summary["tuning"] = run_tuning(args, model, result, input_size, in_chans, ctx)
        distributed.barrier(ctx)
    if not ctx.is_main:  # rank 0 evaluates and writes
        distributed.teardown(ctx)
        return 0
    if args.data and not args.no_eval:
        summary["accuracy"] = evaluate_pair(args, model, result.model, input_size, in_chans)
    out_dir = save(result, args.out, dtype=torch.float16 if args.fp16_weights else None)
    partial = Path(f"{args.out}.partial")
    if summary:
        from .files import write_json

        write_json(out_dir / "tune_report.json", summary)
        if (partial / "tune_log.jsonl").is_file():
            os.replace(partial / "tune_log.jsonl", out_dir / "tune_log.jsonl")
    shutil.rmtree(partial, ignore_errors=True)
    distributed.teardown(ctx)
    if selection is not None:
        from .files import write_json

        _log(f"wrote {write_json(out_dir / 'selection.json', selection.to_dict())}")
    if not args.no_report:
        from .report import build_report, write_report

        if args.data and not args.no_eval:
            summary["accuracy"].update(evaluate_references(args, references, input_size))
        data = build_report(
            model,
            result.model,
            result.plan.input_shape,
            plan=result.plan,
            slim_report=rep,
            accuracy=summary.get("accuracy"),
            selection=selection.to_dict() if selection is not None else None,
            references=references,
            command=" ".join(["deeprebirth", *sys.argv[1:]]),
            runtimes=args.report_runtimes or report_runtimes(),
            runs=args.report_runs,
            log=_log,
        )
        _log(f"wrote {write_report(data, out_dir)}")
    console.print(
        f"slimmed: {len(rep.applied)} merges applied, {len(rep.reverted)} reverted, "
        f"{len(rep.skipped)} skipped -> {out_dir}/ (plan.json, model.safetensors)"
    )
    return 0


def select_for_budget(args, model, input_size: int, in_chans: int):
    """The plan meeting --latency-budget on --runtime at the least estimated error."""
    from itertools import islice

    from rich.table import Table

    from .graph import example_input
    from .plan import make_plan
    from .plan.select import RANK_RATIOS, reconstruction_error, select_plan
    from .profiling.bench import latencies
    from .transforms import apply_plan

    example = example_input(1, in_chans, input_size)
    config = _model_config(args)
    _log("finding every merge and Tucker rank to choose from")
    plan = make_plan(
        model, example, name=args.model, model_config=config, depth=args.drop_activations
    )
    tucker_plans = [
        make_plan(model, example, name=args.model, model_config=config, tucker=True, rank_ratio=r)
        for r in (None, *RANK_RATIOS)
    ]
    if args.data:
        from .data import get_dataset, get_loader

        ds = get_dataset(args.data, "val", input_size=input_size, in_chans=in_chans)
        batches = [x for x, _ in islice(get_loader(ds, 16), 4)]
    else:
        _log("no --data: what each option costs in accuracy is estimated on random inputs")
        batches = [example_input(16, in_chans, input_size) for _ in range(4)]
    selection = select_plan(
        model,
        example,
        plan,
        args.latency_budget,
        tucker_plans=tucker_plans,
        batches=batches,
        runtime=args.runtime,
        threads=args.threads,
        runs=args.selection_runs,
        log=_log,
    )
    # Check the prediction, and compare with the fixed plan (every learned merge).
    selected, _ = apply_plan(model, selection.plan, example)
    fixed, _ = apply_plan(model, plan, example)
    _log(f"measuring the selected plan on {args.runtime}")
    t = latencies(
        {
            k: (m, example)
            for k, m in (("original", model), ("selected", selected), ("fixed", fixed))
        },
        runtimes=[args.runtime],
        threads=args.threads,
        runs=args.selection_runs,
    )[args.runtime]
    selection.extra = {
        "original_ms": t["original"].median_ms,
        "measured_ms": t["selected"].median_ms,
        "fixed_plan_ms": t["fixed"].median_ms,
        "error": reconstruction_error(selected, model, batches),
        "fixed_plan_error": reconstruction_error(fixed, model, batches),
    }
    table = Table(title=f"selected for {args.latency_budget:.2f} ms on {args.runtime}")
    for col in ("option", "saves ms", "error"):
        table.add_column(col, justify="left" if col == "option" else "right")
    for o in selection.options:
        if o.key in selection.chosen:
            table.add_row(o.key, f"{o.saving_ms:.2f}", f"{o.cost:.2e}")
    out.print(table)
    x = selection.extra
    out.print(
        f"predicted {selection.predicted_ms:.2f} ms, measured {x['measured_ms']:.2f} ms "
        f"(original {x['original_ms']:.2f} ms, every merge {x['fixed_plan_ms']:.2f} ms); "
        f"output error {x['error']:.2e} vs {x['fixed_plan_error']:.2e} with every merge"
    )
    if x["measured_ms"] > args.latency_budget:
        console.print(
            f"[yellow]note:[/yellow] measured {x['measured_ms']:.2f} ms is over the budget: "
            "savings did not add up as the table predicts (timing noise or interactions)"
        )
    return selection


def run_tuning(args, teacher, result, input_size: int, in_chans: int, ctx) -> dict:
    from itertools import islice

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .data import get_dataset, get_loader
    from .slimming import tune
    from .tuning import TuneConfig, distributed
    from .tuning.trainer import config_dict

    train = get_dataset(args.data, "train", input_size=input_size, in_chans=in_chans)
    loader = distributed.loader(train, args.batch_size, ctx)
    config = TuneConfig(
        max_batches=args.max_batches,
        epochs_per_stage=args.epochs_per_stage,
        lr=args.lr,
        finetune_batches=args.finetune_batches,
        finetune_epochs=args.finetune_epochs,
        finetune_share=args.finetune_share,
        finetune_lr=args.finetune_lr,
        use_labels=args.labels,
        all_at_once=args.all_at_once,
        reinit=args.from_scratch,
        budget_minutes=args.budget_minutes,
    )
    # A stage is kept only if it leaves the student no worse on these held-out images.
    val = get_dataset(args.data, "val", input_size=input_size, in_chans=in_chans)
    probe = list(islice(get_loader(val, args.batch_size), config.probe_batches))
    tasks: dict[str, int] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not ctx.is_main) as bar:

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"tune {stage}", total=total, loss=loss)
            bar.update(tasks[stage], completed=step, loss=loss)

        partial = f"{args.out}.partial"
        records = tune(
            result,
            teacher,
            loader,
            config,
            partial,
            resume=args.resume,
            progress=progress,
            is_main=ctx.is_main,
            wrap=distributed.wrapper(ctx),
            device=ctx.device,
            probe=probe,
        )
    return {"config": config_dict(config), "stages": records}


def report_runtimes() -> list[str]:
    """The slim report's runtimes: PyTorch eager, ONNX Runtime, and ExecuTorch if installed."""
    import importlib.util

    return ["torch", "ort"] + (["executorch"] if importlib.util.find_spec("executorch") else [])


def check_references(args) -> list[str]:
    """--references as a list, each a zoo name or a weights file that loads (checked now,
    before any tuning, so a typo costs nothing)."""
    from .report import REFERENCES, reference_model

    if args.no_report:
        return []
    refs = [r for r in args.references.split(",") if r] if args.references else list(REFERENCES)
    for ref in refs:
        reference_model(ref, num_classes=10)
    return refs


def evaluate_references(args, references: list[str], input_size: int) -> dict:
    """Top-1/top-5 of the trained references (weights files) on the test split; a reference
    that does not fit the data is reported and left out (the slimmed model is saved by now)."""
    from .data import get_dataset, get_loader
    from .evaluation import evaluate
    from .report import reference_model

    acc = {}
    for ref in references:
        if not Path(ref).is_file():  # a zoo name: random weights, nothing to evaluate
            continue
        name, model, ref_chans, _ = reference_model(ref, num_classes=10)
        try:
            data = get_dataset(args.data, "test", input_size=input_size, in_chans=ref_chans)
            acc[name] = evaluate(model, get_loader(data, 256))
        except DeepRebirthError as e:
            console.print(f"[yellow]note:[/yellow] reference {ref} not evaluated: {e}")
            continue
        out.print(f"{name} (reference): top-1 {100 * acc[name]['top1']:.2f}%")
    return acc


def evaluate_pair(args, teacher, student, input_size: int, in_chans: int) -> dict:
    from .data import get_dataset, get_loader
    from .evaluation import evaluate

    def loader(split: str):
        return get_loader(
            get_dataset(args.data, split, input_size=input_size, in_chans=in_chans), 256
        )

    # val: what recipes are compared on; test: read once, to report the finished model.
    val, test = loader("val"), loader("test")
    acc = {}
    for who, model in (("teacher", teacher), ("slimmed", student)):
        v = evaluate(model, val)
        acc[who] = {**evaluate(model, test), "val_top1": v["top1"], "val_top5": v["top5"]}
        r = acc[who]
        out.print(
            f"{who}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  ({r['n']} test "
            f"images); validation top-1 {100 * r['val_top1']:.2f}%"
        )
    return acc


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .data import get_dataset, get_loader, num_classes_of
    from .evaluation import evaluate, load_model_file
    from .export import is_deployed_file, load_deployed

    path = Path(args.model)
    if path.suffix == ".safetensors" and path.is_file():
        model, input_size, in_chans = load_model_file(path)
    elif is_deployed_file(path):
        model = load_deployed(path)
        input_size, in_chans = model.input_size, model.in_chans
        if args.input_size not in (None, input_size):
            raise DeepRebirthError(f"{path} takes {input_size}x{input_size} inputs")
    else:
        args.pretrained = False
        model, input_size, in_chans = load_model_from_args(args)
    input_size = args.input_size or input_size
    ds = get_dataset(args.data, args.split, input_size=input_size, in_chans=in_chans)
    classes = num_classes_of(ds)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"evaluating {args.model}", total=len(ds))
        r = evaluate(
            model, get_loader(ds, args.batch_size), on_batch=lambda n: bar.advance(task, n)
        )
    if classes is not None:
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
    from .export import export
    from .graph import example_input

    if args.int8 and (args.format == "torchscript" or not args.data):
        raise DeepRebirthError(
            "--int8 needs --format onnx or executorch, and --data (calibration images)"
        )
    if args.format == "executorch":
        from .export.executorch import require_executorch

        require_executorch()  # before any work
    model, input_size, in_chans = load_model_from_args(args)
    if args.data:  # real images for the parity check
        from .data import get_dataset, get_loader

        ds = get_dataset(args.data, "val", input_size=input_size, in_chans=in_chans)
        inputs = next(iter(get_loader(ds, 64 if args.int8 else 8)))[0]
    else:
        inputs = example_input(2, in_chans, input_size)
    if args.int8:
        return export_int8_cli(args, model, inputs, input_size, in_chans)
    r = export(model, args.output, args.format, inputs)
    if args.format == "executorch":
        print_delegation(r["delegation"])
    extra = r.get("leftover_non_tensor")
    if extra:
        console.print(
            f"[yellow]warning:[/yellow] non-tensor layers left in the ONNX graph: {extra}"
        )
    out.print(
        f"exported {args.model} -> {args.output} ({args.format}); parity with PyTorch: "
        f"{r['relative_error']:.1e} of the output's scale on {r['inputs'][0]} "
        f"{'real' if args.data else 'random'} inputs"
    )
    return 0


def export_int8_cli(args, model, inputs, input_size: int, in_chans: int) -> int:
    from itertools import islice

    from .data import get_dataset, get_loader
    from .export import export_int8

    calibration_set = get_dataset(args.data, "train", input_size=input_size, in_chans=in_chans)
    loader = get_loader(calibration_set, 64)  # the first images: the same ones every run
    batches = list(islice((x for x, _ in loader), -(-args.calibration_images // 64)))
    _log(f"calibrating int8 ranges on {sum(len(b) for b in batches)} training images")
    if args.format == "executorch":
        from .export import export_executorch

        r = export_executorch(model, args.output, inputs, batches)
        print_delegation(r["delegation"])
        what = "int8 ExecuTorch program, XNNPACK quantizer"
    else:
        r = export_int8(model, args.output, inputs, batches, args.int8_format)
        what = f"int8 ONNX, {args.int8_format}"
    out.print(
        f"exported {args.model} -> {args.output} ({what}); against PyTorch float on "
        f"{r['inputs'][0]} real validation images: top-1 unchanged on "
        f"{100 * r['top1_agreement']:.1f}%, error {r['relative_error']:.1e} of the output's scale"
    )
    return 0


def print_delegation(d: dict) -> None:
    """Which operators XNNPACK runs, and which fall back to ExecuTorch's portable kernels."""
    portable = {k: v for k, v in d["portable_ops"].items() if k != "getitem"}
    out.print(
        f"XNNPACK runs {d['delegated_nodes']} operators in {d['delegated_subgraphs']} "
        f"subgraph(s); portable kernels run "
        + (", ".join(f"{k} x{v}" for k, v in portable.items()) or "nothing else")
    )


def load_for_bench(spec: str, config: dict, input_size: int | None):
    """A zoo model, a slimmed directory, a weights file or an exported file (.onnx, .pte);
    (model, input_shape)."""
    from .evaluation import load_model_file
    from .export import is_deployed_file, load_deployed
    from .slimming import input_shape_of, is_slimmed_dir, load
    from .zoo import get_model, model_meta

    if is_slimmed_dir(spec):
        return load(spec), input_shape_of(spec)
    if is_deployed_file(spec):
        model = load_deployed(spec)
        return model, list(model.input_shape)
    if spec.endswith(".safetensors") and Path(spec).is_file():
        model, size, in_chans = load_model_file(spec)
        return model, [1, in_chans, size, size]
    meta = model_meta(spec)
    in_chans = config.get("in_chans", meta["in_chans"])
    size = input_size or meta["input_size"]
    return get_model(spec, **config), [1, in_chans, size, size]


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from .files import write_json
    from .plan import Plan
    from .profiling.bench import bench
    from .profiling.plot import RUNTIME_LABELS
    from .slimming import PLAN_FILE, is_slimmed_dir

    config, size = {}, args.input_size
    for spec in (args.a, args.b):  # a zoo model is built like the slimmed one beside it
        if is_slimmed_dir(spec):
            plan = Plan.from_dict(json.loads((Path(spec) / PLAN_FILE).read_text()))
            config, size = plan.model_config, size or plan.input_shape[2]
    a, shape_a = load_for_bench(args.a, config, size)
    b, shape_b = load_for_bench(args.b, config, size)
    # An exported file runs only in its own runtime: time both there.
    files = {spec: m.runtime for spec, m in ((args.a, a), (args.b, b)) if hasattr(m, "runtime")}
    if len(set(files.values())) > 1:
        raise DeepRebirthError(f"{args.a} and {args.b} run in different runtimes")
    for spec, runtime in files.items():
        if runtime not in args.runtime:
            raise DeepRebirthError(f"{spec} runs only in {runtime}: use --runtime {runtime}")
        if args.runtime != [runtime]:
            _log(f"{spec}: an exported file, timed in {runtime} only")
            args.runtime = [runtime]
    if shape_a[1:] != shape_b[1:]:
        raise DeepRebirthError(
            f"{args.a} takes input {shape_a[1:]} but {args.b} takes {shape_b[1:]}"
        )
    shape = [args.batch, *shape_a[1:]]
    r = bench(
        a,
        b,
        input_shape=shape,
        runtimes=args.runtime,
        threads=args.threads,
        runs=args.runs,
        labels=(args.a, args.b),
        log=_log,
    )
    r["command"] = " ".join(["deeprebirth", *sys.argv[1:]])
    table = Table(
        title=f"A = {args.a}   B = {args.b}   ({'x'.join(map(str, shape))}, {args.threads} thread(s), {args.runs} interleaved runs)"
    )
    for col in ("", "A", "B", "A / B"):
        table.add_column(col, justify="left" if not col else "right")
    for runtime, d in r["runtimes"].items():
        table.add_row(
            f"{RUNTIME_LABELS.get(runtime, runtime)} ms (median)",
            f"{d['a_ms']:.2f}",
            f"{d['b_ms']:.2f}",
            f"{d['speedup']:.2f}x",
        )
    m = r["memory"]
    if m is not None:  # not known for ONNX files
        table.add_row(
            "peak activations MB", f"{m['a_mb']:.2f}", f"{m['b_mb']:.2f}", f"{m['ratio']:.2f}x"
        )
        table.add_row(
            "GMACs",
            f"{r['macs']['a'] / 1e9:.3f}",
            f"{r['macs']['b'] / 1e9:.3f}",
            f"{r['macs']['ratio']:.2f}x",
        )
        table.add_row(
            "params M", f"{r['params']['a'] / 1e6:.2f}", f"{r['params']['b'] / 1e6:.2f}", ""
        )
    out.print(table)
    if args.json:
        _log(f"wrote {write_json(args.json, r)}")
    return 0


TEACHER = (
    Path(__file__).resolve().parents[2]
    / "benchmarks/weights/bvlc_googlenet_fashion_mnist_teacher.safetensors"
)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end: profile -> plan -> slim -> tune -> evaluate -> bench -> export -> report."""
    from .data import FASHION_MNIST, fashion_mnist_root
    from .errors import DataNotFoundError
    from .report import REFERENCES

    out_dir = Path(args.out)
    teacher = Path(args.teacher)
    try:
        fashion_mnist_root()
        have_data = True
    except DataNotFoundError as e:
        console.print(f"[yellow]note:[/yellow] {e}; running the speed-only demo")
        have_data = False
    if not teacher.is_file():
        console.print(
            f"[yellow]note:[/yellow] no teacher weights at {teacher}; running the speed-only demo"
        )
    if not (have_data and teacher.is_file()):
        return speed_only_demo(args, out_dir)

    common = ["--checkpoint", str(teacher)]
    references = []  # SqueezeNet 1.1 and MobileNetV2 trained with the teacher's recipe, if there
    for name in REFERENCES:
        trained = teacher.with_name(f"{name}_fashion_mnist.safetensors")
        references.append(str(trained) if trained.is_file() else name)
    console.print(
        f"[bold]1/4 profile[/bold] the teacher: BVLC GoogLeNet trained on Fashion-MNIST ({teacher.name})"
    )
    code = main(
        [
            "profile",
            "bvlc_googlenet",
            *common,
            "--runs",
            str(args.runs),
            "--threads",
            str(args.threads),
            "--json",
            str(out_dir / "profile.json"),
            "--plot",
            str(out_dir / "profile.png"),
        ]
    )
    console.print(
        f"[bold]2/4 plan, slim, tune[/bold] layer-wise against the teacher ({args.budget_minutes:g} min budget; labels in the final fine-tune), evaluate, report"
    )
    code = code or main(
        [
            "slim",
            "bvlc_googlenet",
            *common,
            "--data",
            FASHION_MNIST,
            "--budget-minutes",
            str(args.budget_minutes),
            "--max-batches",
            "100000",
            "--finetune-batches",
            "100000",
            "--labels",
            "--finetune-lr",
            "3e-4",
            "--references",
            ",".join(references),
            "--out",
            str(out_dir / "slim"),
        ]
    )
    console.print("[bold]3/4 export[/bold] the slimmed model to ONNX, checked on real images")
    code = code or main(
        ["export", str(out_dir / "slim"), "-o", str(out_dir / "slim.onnx"), "--data", FASHION_MNIST]
    )
    console.print("[bold]4/4 side by side[/bold]")
    code = code or main(
        [
            "bench",
            "bvlc_googlenet",
            str(out_dir / "slim"),
            "--runs",
            str(args.runs),
            "--threads",
            str(args.threads),
            "--json",
            str(out_dir / "bench.json"),
        ]
    )
    if code == 0:
        console.print(
            f"demo done: the report is {out_dir / 'slim' / 'report.md'}; also profile.json/png, bench.json, slim.onnx in {out_dir}/"
        )
    return code


def speed_only_demo(args: argparse.Namespace, out_dir: Path) -> int:
    """Without data or teacher: BVLC GoogLeNet with random weights, speed and memory only."""
    from .files import write_json
    from .profiling.bench import bench
    from .slimming import save, slim
    from .zoo import get_model

    model = get_model("bvlc_googlenet")
    args.model = "bvlc_googlenet"
    run_profile(args, model, 224, 3, out_dir / "profile.json", out_dir / "profile.png")
    result = slim(model, name="bvlc_googlenet", input_size=224)
    print_plan(result.plan)
    save(result, out_dir / "slim")
    r = bench(
        model,
        result.model,
        input_shape=(1, 3, 224, 224),
        runtimes=args.runtime,
        threads=args.threads,
        runs=args.runs,
        labels=("bvlc_googlenet", "slimmed"),
        log=_log,
    )
    write_json(out_dir / "bench.json", r)
    for runtime, d in r["runtimes"].items():
        out.print(
            f"{runtime}: {d['a_ms']:.1f} ms -> {d['b_ms']:.1f} ms ({d['speedup']:.2f}x faster)"
        )
    console.print(f"speed-only demo done: results in {out_dir}/")
    return 0


def check_tucker_args(args: argparse.Namespace) -> None:
    for flag in ("rank_ratio", "pointwise_rank_ratio"):
        if getattr(args, flag) is not None and not args.tucker:
            raise DeepRebirthError(f"--{flag.replace('_', '-')} needs --tucker")


def add_compression_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drop-activations",
        action="store_true",
        help="depth compression: chains of convs (activations dropped) become one conv where "
        "that saves MACs (drop_activation, merge_convs)",
    )
    p.add_argument(
        "--tucker", action="store_true", help="also Tucker-2 decompose the remaining kxk convs"
    )
    p.add_argument(
        "--rank-ratio",
        type=rank_share,
        help="Tucker ranks as this share of the channels (default: EVBMF)",
    )
    p.add_argument(
        "--pointwise-rank-ratio",
        type=rank_share,
        metavar="R",
        help="with --tucker, also factor the 1x1 convs, at rank R x channels (default: leave them)",
    )


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


def build_parser() -> argparse.ArgumentParser:
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
    add_compression_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("slim", help="apply a plan and save the slimmed model")
    add_model_args(p)
    p.add_argument(
        "--plan", type=Path, help="a plan from `deeprebirth plan -o` (default: make one)"
    )
    add_compression_args(p)
    p.add_argument(
        "--exact-only", action="store_true", help="apply only merges that keep the function"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--fp16-weights", action="store_true", help="store the weights in float16 (half the size)"
    )
    t = p.add_argument_group("tuning (layer-wise, against the original; needs --data)")
    t.add_argument(
        "--data", help="images to tune on: fashion-mnist, an ImageFolder directory, synthetic"
    )
    t.add_argument("--no-tune", action="store_true", help="skip tuning")
    t.add_argument(
        "--no-eval", action="store_true", help="skip the before/after accuracy on the test split"
    )
    t.add_argument(
        "--max-batches", type=positive_int, default=200, help="batches per stage (default 200)"
    )
    t.add_argument(
        "--epochs-per-stage",
        type=positive_int,
        default=1,
        help="passes over the data per stage, at most (default 1)",
    )
    t.add_argument(
        "--finetune-batches",
        type=int,
        default=300,
        help="whole-network distillation batches after the stages (default 300; 0: none)",
    )
    t.add_argument(
        "--finetune-epochs",
        type=positive_int,
        default=1,
        help="passes over the data in the fine-tune, at most (default 1)",
    )
    t.add_argument(
        "--finetune-share",
        type=share,
        default=0.3,
        help="share of --budget-minutes kept for the fine-tune (default 0.3)",
    )
    t.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="stage learning rate (Adam, cosine decay; default 1e-3)",
    )
    t.add_argument(
        "--finetune-lr", type=float, default=1e-4, help="fine-tune learning rate (default 1e-4)"
    )
    t.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    t.add_argument("--budget-minutes", type=float, help="wall-clock budget for all tuning")
    t.add_argument(
        "--labels",
        action="store_true",
        help="use labels (cross-entropy) in the final fine-tune; stages never do",
    )
    t.add_argument(
        "--all-at-once",
        action="store_true",
        help="train all merged layers in one stage (for comparison)",
    )
    t.add_argument(
        "--from-scratch",
        action="store_true",
        help="re-initialise the merged layers instead of starting from the copied weights "
        "(for comparison)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT.partial/"
    )
    t.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N")
    b = p.add_argument_group("plan selection under a latency budget")
    b.add_argument(
        "--latency-budget",
        type=float,
        metavar="MS",
        help="choose the merges and Tucker ranks that reach MS ms (batch 1) at the least error",
    )
    b.add_argument(
        "--runtime", choices=("ort", "torch"), default="ort", help="where to measure (default ort)"
    )
    b.add_argument("--threads", type=positive_int, default=1, help="threads (default 1)")
    b.add_argument(
        "--selection-runs",
        type=positive_int,
        default=15,
        help="interleaved timed runs per option (default 15)",
    )
    p.add_argument(
        "--no-report", action="store_true", help="skip DIR/report.md (it measures both models)"
    )
    p.add_argument(
        "--report-runs",
        type=positive_int,
        default=20,
        help="timed runs per model for the report (default 20)",
    )
    p.add_argument(
        "--report-runtimes",
        type=parse_runtimes,
        metavar="LIST",
        help="runtimes the report measures, comma-separated (default torch,ort, and executorch "
        "when the [mobile] extra is installed)",
    )
    p.add_argument(
        "--references",
        metavar="LIST",
        help="reference networks in the report, comma-separated: zoo names (random weights, "
        "latency only) or weights files written by deeprebirth (trained: accuracy measured too); "
        "default squeezenet1_1,mobilenet_v2",
    )
    p.set_defaults(func=cmd_slim)

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
    from .export.int8 import DEFAULT_INT8_FORMAT, INT8_FORMATS

    q = p.add_argument_group(
        "int8 (ONNX Runtime static quantization, or the XNNPACK quantizer for executorch; "
        "needs --data)"
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

    p = sub.add_parser("demo", help="the main job, end to end, on the built-in defaults")
    add_timing_args(p)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--teacher",
        default=str(TEACHER),
        help="teacher weights (default: the committed Fashion-MNIST GoogLeNet)",
    )
    p.add_argument("--budget-minutes", type=float, default=3.0, help="tuning budget (default 3)")
    p.set_defaults(func=cmd_demo)
    return parser


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
        console.print(f"[red]deeprebirth: error:[/red] {e}", highlight=False, soft_wrap=True)
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
