"""The ``deeprebirth`` command line.

Every subcommand reports bad input as one line on stderr and exits non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("model", help="zoo name (see `deeprebirth models`) or package.module:factory")
    p.add_argument("--checkpoint", type=Path, help="weights: .safetensors or a PyTorch state dict")
    p.add_argument(
        "--pretrained", action="store_true", help="torchvision weights from the local cache only"
    )
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--in-chans", type=int, help="input channels (default: the model's)")
    p.add_argument("--input-size", type=int, help="input height and width (default: the model's)")


def load_model_from_args(args: argparse.Namespace):
    """Build the model the arguments name; returns (model, input_size, in_chans)."""
    from .zoo import get_model, model_meta

    meta = model_meta(args.model)
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
    model, input_size, in_chans = load_model_from_args(args)
    run_profile(args, model, input_size, in_chans, args.json, args.plot)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import get_dataset, num_classes_of

    for split in ("train", "test"):
        ds = get_dataset(args.spec, split, input_size=args.input_size, in_chans=args.in_chans)
        x, _ = ds[0]
        classes = num_classes_of(ds)
        out.print(f"{split}: {len(ds)} images, {classes} classes, tensor shape {tuple(x.shape)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .zoo import get_model

    out = Path(args.out)
    _log("profiling BVLC GoogLeNet (random weights; only speed is measured here)")
    model = get_model("bvlc_googlenet")
    args.model = "bvlc_googlenet"
    run_profile(args, model, 224, 3, out / "profile.json", out / "profile.png")
    console.print(f"demo done: results in {out}/ (profile.json, profile.png)")
    return 0


def add_timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        type=parse_runtimes,
        default=["torch", "ort"],
        help="comma list of runtimes: torch (PyTorch eager), ort (ONNX Runtime); default both",
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

    p = sub.add_parser("data", help="check that a data set is found and how it is adapted")
    p.add_argument("spec", help="fashion-mnist, synthetic, or an ImageFolder directory")
    p.add_argument("--input-size", type=positive_int, default=224, help="resize to (default 224)")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="channels (default 3)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="the main job, end to end, on the built-in defaults")
    add_timing_args(p)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
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
