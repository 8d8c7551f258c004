"""A recipe: the whole of one run, as data.

    profile -> plan -> (select under a latency budget) -> slim -> tune -> evaluate ->
    export -> report

One TOML file says which model, which data, which merges, how to tune and what to export;
``deeprebirth run RECIPE.toml`` runs it (:func:`deeprebirth.pipeline.run` from Python),
and every output directory holds the resolved recipe it was made with (``recipe.toml``),
so a run can be repeated exactly. ``deeprebirth slim`` and its flags build a recipe too.

Example:
    >>> from deeprebirth.recipe import Recipe, ModelConfig
    >>> recipe = Recipe(model=ModelConfig(name="bvlc_googlenet", input_size=64), out="runs/g")
    >>> recipe.plan.tucker
    False
    >>> Recipe.from_toml_text(recipe.to_toml()) == recipe
    True

The key reference (``docs/recipes.md``) is generated from these dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from .config import ConfigError, from_dict, option, read_toml, reference, set_key, to_toml, tomllib
from .export.check import FORMATS
from .export.int8 import CALIBRATION_METHODS, DEFAULT_INT8_FORMAT, INT8_FORMATS
from .files import atomic_write_text
from .plan.config import PlanConfig
from .planning.select import LATENCY_MODELS, OUT_OF_REACH, SELECT_RUNTIMES
from .profiling.profile import DEFAULT_RUNTIMES, RUNTIMES
from .tuning.trainer import TuneConfig

#: Bumped when a key changes meaning; older files are refused with a clear message.
RECIPE_VERSION = 1
RECIPE_FILE = "recipe.toml"


@dataclass
class ModelConfig:
    name: str = option(
        help="zoo name (`deeprebirth models`), timm:NAME, package.module:factory, or a "
        "slimmed directory"
    )
    checkpoint: str | None = option(None, "weights: .safetensors or a PyTorch state dict")
    pretrained: bool = option(False, "torchvision weights from the local cache only")
    num_classes: int | None = option(None, "classifier outputs (default: the model's)")
    in_chans: int | None = option(None, "input channels (default: the model's)")
    input_size: int | None = option(None, "input height and width (default: the model's)")


@dataclass
class DataConfig:
    spec: str | None = option(
        None,
        "images to tune and evaluate on: fashion-mnist, an ImageFolder directory, synthetic "
        "(none: no tuning, no accuracy)",
    )
    batch_size: int = option(64, "tuning batch size")
    augment: bool = option(
        False,
        "tune on randomly flipped and shifted training images (up to 1/8 of the side), as the "
        "references are trained: the teacher is matched on the same views",
    )


@dataclass
class ProfileConfig:
    enabled: bool = option(False, "profile the original model first (profile.json, profile.png)")
    runtimes: list[str] = option(list(DEFAULT_RUNTIMES), f"any of {', '.join(RUNTIMES)}")
    threads: int = option(1, "threads per runtime")
    batch: int = option(1, "batch size (ExecuTorch programs run batch 1)")
    runs: int = option(30, "timed runs")
    top: int = option(10, "slowest layers to list")


@dataclass
class SelectConfig:
    latency_budget_ms: float | None = option(
        None,
        "choose the merges and Tucker ranks that reach this latency (batch 1) at the least "
        "error on the validation split; none: every merge of the plan",
    )
    latency_budget_share: float | None = option(
        None,
        "the budget as a share of the original's latency, measured first on select.runtime "
        "(0.75: a quarter faster); instead of latency_budget_ms, which is machine-bound",
    )
    latency_budget_of: str | None = option(
        None,
        "the budget is this model's latency: any model spec (a zoo name, a weights file, a "
        "slimmed directory, an .onnx file), timed beside the original on select.runtime in "
        "the same run, at the original's input; instead of latency_budget_ms",
    )
    margin: float = option(
        0.03,
        "aim this share under the budget (0.03: 3% under), so that timing drift between runs "
        "and the latency model's error (a few percent, measured) do not put the selected "
        "plan over it; it is still judged against the budget (0: aim at the budget itself)",
    )
    out_of_reach: str = option(
        "error",
        "a budget no plan reaches: error (stop, saying how close every option together comes) "
        "or fastest (take that plan, every group's fastest option, and say it is over)",
    )
    cost_batches: int = option(
        0,
        "an option's cost is its output error after this many training batches per stage of "
        "layer-wise tuning and as many of the whole-network fine-tune (50 ranked MobileNetV2's "
        "depth chains as the full tuning does, where their error before tuning did not: "
        "benchmarks/results/cost_proxy.md; needs data.spec; a short tuning per option; 0: the "
        "error before tuning)",
    )
    runtime: str = option(
        "ort",
        "where latency is measured: ort, ort-int8 (ONNX Runtime, every model int8 as "
        "export.int8 writes it: a budget for the int8 model), executorch or torch",
    )
    threads: int = option(1, "threads")
    runs: int = option(15, "interleaved timed runs per option, in each of three passes")
    latency_model: str | None = option(
        None,
        "blocks: each block (between cuts every option keeps) timed alone once per form the "
        "options give it, a plan's latency predicted as their sum plus a constant and a price "
        "per MB of weights fitted on plans timed whole; networks: each option timed on the "
        "whole network, the choice measured (none: blocks in ort, ort-int8 and executorch, "
        "each choice timed whole where the fit misses one of the plans it was fitted on by "
        "more than 10%; networks in torch)",
    )

    def selects(self) -> bool:
        """Whether a latency budget (in ms or as a share) chooses the plan."""
        return any(
            v is not None
            for v in (self.latency_budget_ms, self.latency_budget_share, self.latency_budget_of)
        )


@dataclass
class TuneSection(TuneConfig):
    enabled: bool = option(True, "tune the learned merges (needs data.spec)")
    resume: bool = option(False, "continue an interrupted run from OUT.partial/")
    device: str = option("auto", "auto (a GPU when present), cpu, cuda, cuda:N")
    start_from: str | None = option(
        None,
        "a slimmed directory made with this plan (a finished run's out): the student starts "
        "from its tuned weights and only the fine-tune runs, to add passes without repeating "
        "the stages and the linearization",
    )
    fit_budget: bool = option(
        True,
        "when budget_minutes buys only a share of the tuning the plan needs (timed here), "
        "keep that share of the learned merges, those saving most latency on select.runtime "
        "per unit of error, and leave the others off (a plan found by the tool: not with "
        "plan.file, a latency budget or start_from)",
    )

    def tune_config(self) -> TuneConfig:
        return TuneConfig(**{f.name: getattr(self, f.name) for f in fields(TuneConfig)})


@dataclass
class EvaluateConfig:
    enabled: bool = option(True, "top-1/top-5 before and after, on the val and test splits")


@dataclass
class ExportConfig:
    formats: list[str] = option(
        [], f"files to write into the output directory: {', '.join(FORMATS)}"
    )
    int8: bool = option(False, "also an int8 file per onnx/executorch format (needs data.spec)")
    int8_format: str = option(DEFAULT_INT8_FORMAT, f"ONNX int8: {', '.join(INT8_FORMATS)}")
    calibration_images: int = option(512, "training images that fix the int8 ranges")
    int8_calibration: str = option(
        "auto",
        f"how ONNX int8 ranges are fixed: {', '.join(CALIBRATION_METHODS)}, or auto (each "
        "tried, the best top-1 on int8_choice_images validation images kept)",
    )
    int8_choice_images: int = option(
        5000,
        "validation images the auto calibration (and the layers kept float) is judged on: "
        "on 1,024, one image is 0.1 point, too coarse for a 0.3-point limit",
    )


@dataclass
class ReportConfig:
    enabled: bool = option(True, "write report.md (it measures both models)")
    runs: int = option(20, "timed runs per model")
    runtimes: list[str] | None = option(
        None, "runtimes measured (none: torch, ort, and executorch when installed)"
    )
    references: list[str] | None = option(
        None,
        "reference networks: zoo names (random weights, latency only), weights files written "
        "by deeprebirth or slimmed directories (accuracy too); none: squeezenet1_1, mobilenet_v2",
    )


@dataclass
class Recipe:
    model: ModelConfig = option(help="the network to slim (the teacher)")
    version: int = option(RECIPE_VERSION, "recipe format version")
    out: str | None = option(None, "output directory (none: runs/RECIPE-NAME)")
    fp16_weights: bool = option(False, "store the slimmed weights in float16")
    data: DataConfig = option(
        help="images for tuning, evaluation and int8 calibration", default_factory=DataConfig
    )
    profile: ProfileConfig = option(
        help="where the original's time goes", default_factory=ProfileConfig
    )
    plan: PlanConfig = option(help="which merges", default_factory=PlanConfig)
    select: SelectConfig = option(
        help="choosing merges under a latency budget", default_factory=SelectConfig
    )
    tune: TuneSection = option(
        help="layer-wise tuning, then a fine-tune", default_factory=TuneSection
    )
    evaluate: EvaluateConfig = option(help="accuracy", default_factory=EvaluateConfig)
    export: ExportConfig = option(
        help="deployable files, checked against PyTorch", default_factory=ExportConfig
    )
    report: ReportConfig = option(help="report.md", default_factory=ReportConfig)

    # --- reading and writing ------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        version = data.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise ConfigError(
                f"recipe version {version!r}: this deeprebirth reads version {RECIPE_VERSION}"
            )
        recipe = from_dict(cls, data)
        recipe.check()
        return recipe

    @classmethod
    def from_toml_text(cls, text: str) -> Recipe:

        return cls.from_dict(tomllib.loads(text))

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> Recipe:
        """The recipe in ``path``, with ``key=value`` overrides (``--set``) applied."""
        data = read_toml(path)
        for assignment in overrides:
            set_key(data, assignment)
        data.setdefault("out", f"runs/{Path(path).stem}")
        return cls.from_dict(data)

    def to_toml(self, header: str = "") -> str:
        return to_toml(self, header)

    def save(self, path: str | Path, header: str = "") -> Path:

        atomic_write_text(path, self.to_toml(header))
        return Path(path)

    def replace(self, **sections) -> Recipe:
        return dataclasses.replace(self, **sections)

    # --- checks -----------------------------------------------------------------------

    def check(self) -> None:
        """Values in range and consistent, or a :class:`ConfigError` naming the key."""
        for key, value in (
            ("profile.threads", self.profile.threads),
            ("profile.runs", self.profile.runs),
            ("select.threads", self.select.threads),
            ("select.runs", self.select.runs),
            ("report.runs", self.report.runs),
            ("data.batch_size", self.data.batch_size),
            ("export.calibration_images", self.export.calibration_images),
            ("export.int8_choice_images", self.export.int8_choice_images),
        ):
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, not {value}")
        for key in ("num_classes", "in_chans", "input_size"):
            value = getattr(self.model, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be at least 1, not {value}")
        _check_choices("profile.runtimes", self.profile.runtimes, RUNTIMES)
        _check_choices("report.runtimes", self.report.runtimes or [], RUNTIMES)
        _check_choices("export.formats", self.export.formats, FORMATS)
        _check_choices("export.int8_format", [self.export.int8_format], tuple(INT8_FORMATS))
        _check_choices(
            "export.int8_calibration",
            [self.export.int8_calibration],
            (*CALIBRATION_METHODS, "auto"),
        )
        _check_choices("select.runtime", [self.select.runtime], SELECT_RUNTIMES)
        if self.plan.runtime is not None:
            _check_choices("plan.runtime", [self.plan.runtime], SELECT_RUNTIMES)
        _check_choices("select.out_of_reach", [self.select.out_of_reach], OUT_OF_REACH)
        if self.select.latency_model is not None:
            _check_choices("select.latency_model", [self.select.latency_model], LATENCY_MODELS)
        for key in ("rank_ratio", "pointwise_rank_ratio"):
            value = getattr(self.plan, key)
            if value is not None and not self.plan.tucker:
                raise ConfigError(f"plan.{key} needs plan.tucker")
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"plan.{key} must be in (0, 1], not {value}")
        both = set(self.plan.enable) & set(self.plan.disable)
        if both:
            raise ConfigError(f"plan.enable and plan.disable both name {', '.join(sorted(both))}")
        s = self.select
        if s.selects() and (self.plan.enable or self.plan.disable):
            raise ConfigError(
                "plan.enable/plan.disable choose entries by hand, a latency budget chooses "
                "them by cost: give one"
            )
        budgets = [
            f"select.{k}"
            for k in ("latency_budget_ms", "latency_budget_share", "latency_budget_of")
            if getattr(s, k) is not None
        ]
        if len(budgets) > 1:
            raise ConfigError(f"{' and '.join(budgets)}: give one budget, not {len(budgets)}")
        if s.latency_budget_ms is not None and s.latency_budget_ms <= 0:
            raise ConfigError("select.latency_budget_ms must be positive")
        share = s.latency_budget_share
        if share is not None and not 0.0 < share <= 1.0:
            raise ConfigError(f"select.latency_budget_share must be in (0, 1], not {share}")
        if not 0.0 <= s.margin < 1.0:
            raise ConfigError(f"select.margin must be in [0, 1), not {s.margin}")
        if s.cost_batches < 0:
            raise ConfigError(f"select.cost_batches must be at least 0, not {s.cost_batches}")
        if s.cost_batches and not self.data.spec:
            raise ConfigError("select.cost_batches tunes each option: it needs data.spec")
        if s.selects() and (self.plan.file or self.plan.exact_only):
            raise ConfigError(f"{budgets[0]} makes the plan: drop plan.file and plan.exact_only")
        if self.export.int8 and not self.data.spec:
            raise ConfigError("export.int8 needs data.spec (calibration images)")
        if self.export.int8 and not set(self.export.formats) & {"onnx", "executorch"}:
            raise ConfigError("export.int8 needs an onnx or executorch format in export.formats")
        if self.out is None:
            raise ConfigError("missing key out (the output directory)")
        self.tune.check()
        if self.tune.start_from is not None:
            if not self.tune.finetunes():
                raise ConfigError(
                    "tune.start_from continues a tuned student with the fine-tune: set "
                    "tune.finetune_batches"
                )
            if self.tune.reinit:
                raise ConfigError("tune.start_from and tune.reinit exclude each other")
            if not (self.tune.enabled and self.data.spec):
                raise ConfigError("tune.start_from fine-tunes: it needs data.spec and tune.enabled")


def _check_choices(key: str, values: list[str], allowed: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{key}: {', '.join(map(repr, bad))} is not one of {', '.join(allowed)}")


def recipe_reference() -> str:
    """``docs/recipes.md``: every key of a recipe, generated from the dataclasses."""
    head = [
        "# Recipe keys",
        "",
        "<!-- generated by `python -m deeprebirth.recipe > docs/recipes.md`: do not edit -->",
        "",
        "A recipe is a TOML file read by `deeprebirth run RECIPE.toml [--set KEY=VALUE ...]`.",
        "Only `model.name` and `out` (or the file name) are needed; every other key has the "
        "default below. Unknown keys and wrong types are errors that name the key. Each output "
        "directory holds the resolved recipe it was made with, `recipe.toml`.",
        "",
    ]
    return "\n".join(head + reference(Recipe)).rstrip() + "\n"


if __name__ == "__main__":
    print(recipe_reference(), end="")
