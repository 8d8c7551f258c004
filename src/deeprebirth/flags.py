"""The command line's flags that are recipe keys (:mod:`deeprebirth.recipe`): each is a row
of a table below (flag, key, argparse options); its help and default come from the recipe,
and :func:`recipe_from_args` turns the parsed flags back into a recipe. The commands that
use them are in :mod:`deeprebirth.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import default_of, field_of, nest
from .planning.select import LATENCY_MODELS, OUT_OF_REACH, SELECT_RUNTIMES
from .profiling import RUNTIMES
from .recipe import Recipe

# --- argument types ----------------------------------------------------------------------


def parse_runtimes(text: str) -> list[str]:

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


def budget_share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return value


# --- flags that are recipe keys ---------------------------------------------------------


def field_help(key: str) -> str:

    return field_of(Recipe, key).metadata.get("help", "")


def key_arg(group, *flags: str, key: str, help: str | None = None, **kwargs) -> None:
    """``flags`` set the recipe key ``key``; help and default come from the recipe."""

    default = default_of(field_of(Recipe, key))
    if not {"action", "metavar", "choices"} & set(kwargs):
        kwargs["metavar"] = flags[0].lstrip("-").upper().replace("-", "_")
    text = help or field_help(key)
    if help is None and default not in (None, False, [], ""):
        shown = ",".join(default) if isinstance(default, list) else default
        text += f" (default {shown})"
    text = text.replace("%", "%%")  # argparse formats help with %: "3% under" broke --help
    group.add_argument(*flags, dest=key, default=argparse.SUPPRESS, help=text, **kwargs)


def recipe_from_args(args: argparse.Namespace, **fixed):
    """The recipe the flags describe (every flag given is a key, ``fixed`` are keys the
    command sets; the rest are defaults)."""

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
    ("--plan-runtime", "plan.runtime", {"choices": SELECT_RUNTIMES}),
    ("--drop-activations", "plan.drop_activations", ON),
    (
        "--linear-chain-ends",
        "plan.end_activation",
        OFF | {"help": "depth compression: merged chains end linear (plan.end_activation false)"},
    ),
    ("--end-activation", "plan.end_activation", ON | {"help": argparse.SUPPRESS}),  # the default
    ("--tucker", "plan.tucker", ON),
    ("--rank-ratio", "plan.rank_ratio", {"type": rank_share}),
    ("--pointwise-rank-ratio", "plan.pointwise_rank_ratio", {"type": rank_share, "metavar": "R"}),
)
SLIM_FLAGS = {
    None: (
        ("--plan", "plan.file", {}),
        ("--exact-only", "plan.exact_only", ON),
        ("--enable", "plan.enable", {"type": comma_list, "metavar": "IDS"}),
        ("--disable", "plan.disable", {"type": comma_list, "metavar": "IDS"}),
        ("--fp16-weights", "fp16_weights", ON),
    ),
    "tuning (layer-wise, against the original; needs --data)": (
        ("--data", "data.spec", {}),
        ("--no-tune", "tune.enabled", OFF | {"help": "skip tuning"}),
        ("--no-eval", "evaluate.enabled", OFF | {"help": "skip the accuracy before and after"}),
        ("--max-batches", "tune.max_batches", {"type": int}),
        ("--epochs-per-stage", "tune.epochs_per_stage", POSITIVE),
        ("--finetune-batches", "tune.finetune_batches", {"type": int}),
        ("--finetune-epochs", "tune.finetune_epochs", POSITIVE),
        ("--finetune-share", "tune.finetune_share", {"type": share}),
        ("--lr", "tune.lr", {"type": float}),
        ("--finetune-lr", "tune.finetune_lr", {"type": float}),
        ("--batch-size", "data.batch_size", POSITIVE),
        ("--budget-minutes", "tune.budget_minutes", {"type": float}),
        (
            "--no-fit-budget",
            "tune.fit_budget",
            OFF | {"help": "tune every learned merge however short --budget-minutes is"},
        ),
        (
            "--no-labels",
            "tune.use_labels",
            OFF | {"help": "distil the teacher's logits alone in the fine-tune (no labels)"},
        ),
        ("--labels", "tune.use_labels", ON | {"help": argparse.SUPPRESS}),  # the default now
        ("--linearize-batches", "tune.linearize_batches", {"type": int}),
        ("--all-at-once", "tune.all_at_once", ON),
        ("--from-scratch", "tune.reinit", ON),
        ("--resume", "tune.resume", ON),
        ("--start-from", "tune.start_from", {"metavar": "DIR"}),
        ("--device", "tune.device", {}),
    ),
    "plan selection under a latency budget": (
        ("--latency-budget", "select.latency_budget_ms", {"type": float, "metavar": "MS"}),
        (
            "--latency-budget-share",
            "select.latency_budget_share",
            {"type": budget_share, "metavar": "SHARE"},
        ),
        ("--latency-budget-of", "select.latency_budget_of", {"metavar": "MODEL"}),
        ("--budget-margin", "select.margin", {"type": float, "metavar": "SHARE"}),
        ("--out-of-reach", "select.out_of_reach", {"choices": OUT_OF_REACH}),
        ("--cost-batches", "select.cost_batches", {"type": int, "metavar": "N"}),
        ("--runtime", "select.runtime", {"choices": SELECT_RUNTIMES}),
        ("--threads", "select.threads", POSITIVE),
        ("--selection-runs", "select.runs", POSITIVE),
        ("--latency-model", "select.latency_model", {"choices": LATENCY_MODELS}),
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
    ("--int8-calibration", "export.int8_calibration", {}),
    ("--calibration-images", "export.calibration_images", POSITIVE),
)


def add_keys(group, flags) -> None:
    for flag, key, options in flags:
        key_arg(group, flag, key=key, **options)


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
