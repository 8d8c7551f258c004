"""What a model spec names, opened: the one place that knows every kind of model file.

A spec is a string (``ModelConfig.name``, or a bare string): a zoo name (``deeprebirth
models``; ``timm:NAME``; ``package.module:factory``), a weights file written by deeprebirth
(``.safetensors`` that names its model), a slimmed directory (``plan.json`` beside its
weights), or an exported file that runs in its own runtime (``.onnx`` in ONNX Runtime,
``.pte`` in ExecuTorch). :func:`open_model` turns any of them into an :class:`Artifact`: the
model and what is known about it. A new kind of file is one more branch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .errors import DeepRebirthError
from .evaluation import load_model_file, weights_meta
from .export import is_deployed_file, is_onnx_file, load_deployed
from .recipe import ModelConfig
from .slimming import is_slimmed_dir, load, plan_of
from .zoo import get_model, model_meta

#: Every kind of spec, and the ones that are PyTorch modules (what slimming, profiling,
#: planning and exporting start from; an exported file only runs and is timed).
KINDS = ("zoo", "weights", "slimmed", "onnx", "pte")
TORCH_KINDS = ("zoo", "weights", "slimmed")
DESCRIPTIONS = {
    "zoo": "a model name",
    "weights": "a weights file",
    "slimmed": "a slimmed directory",
    "onnx": "an exported ONNX file",
    "pte": "an exported ExecuTorch program",
}


@dataclass
class Artifact:
    """A model and what is known about it."""

    model: nn.Module
    #: The spec, resolved: input size, channels and classes filled in from the zoo, the
    #: file's metadata or the slimmed directory's plan.
    spec: ModelConfig
    kind: str
    #: Whether its weights come from training (a file, a checkpoint, pretrained weights),
    #: not a random initialisation.
    trained: bool
    #: A short name for tables: the zoo name, the model a weights file holds, a slimmed
    #: directory's last two path parts.
    label: str

    @property
    def runtime(self) -> str | None:
        """Where it runs: ``ort`` or ``executorch`` for an exported file, None (PyTorch,
        and so every runtime after an export) otherwise."""
        return {"onnx": "ort", "pte": "executorch"}.get(self.kind)

    @property
    def input_shape(self) -> list[int]:
        return [1, self.spec.in_chans, self.spec.input_size, self.spec.input_size]


def kind_of(name: str) -> str:
    """The kind of spec ``name`` is (one of ``KINDS``); a path that names no file is a
    one-line error."""
    if is_slimmed_dir(name):
        return "slimmed"
    if is_deployed_file(name):
        return "onnx" if is_onnx_file(name) else "pte"
    path = Path(name)
    if path.suffix == ".safetensors" and path.is_file():
        return "weights"
    if path.is_dir():
        raise DeepRebirthError(f"{name} is a directory but not a slimmed one (no plan.json)")
    if path.suffix in (".safetensors", ".onnx", ".pte") or "/" in name:
        raise DeepRebirthError(f"{name}: no such file")
    return "zoo"


def open_model(
    spec: ModelConfig | str, kinds: tuple[str, ...] = KINDS, purpose: str = "this command"
) -> Artifact:
    """The model ``spec`` names (see the module's doc), if its kind is one of ``kinds``;
    otherwise a one-line error saying what ``purpose`` takes instead.

    For a zoo model, the spec's ``num_classes`` and ``in_chans`` build it and its
    ``checkpoint`` (or ``pretrained``) gives it weights; files describe their own model
    (a checkpoint's metadata fills what the spec leaves open). An exported file must be
    run at the input size it was exported for.
    """
    spec = ModelConfig(spec) if isinstance(spec, str) else spec
    kind = kind_of(spec.name)
    if kind not in kinds:
        takes = [DESCRIPTIONS[k] for k in kinds]
        takes = ", ".join(takes[:-1]) + f" or {takes[-1]}" if len(takes) > 1 else takes[0]
        raise DeepRebirthError(f"{purpose} takes {takes}; {spec.name} is {DESCRIPTIONS[kind]}")
    return _OPENERS[kind](spec)


def _zoo(spec: ModelConfig) -> Artifact:
    meta = model_meta(spec.name)
    checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
    if checkpoint is not None and checkpoint.suffix == ".safetensors" and checkpoint.is_file():
        saved = weights_meta(checkpoint)  # files from save_weights describe their model
        filled = {
            k: int(saved[k])
            for k in ("num_classes", "in_chans", "input_size")
            if getattr(spec, k) is None and k in saved
        }
        spec = dataclasses.replace(spec, **filled)
    model = get_model(
        spec.name, checkpoint=checkpoint, pretrained=spec.pretrained, **zoo_config(spec)
    )
    spec = dataclasses.replace(
        spec,
        input_size=spec.input_size or meta["input_size"],
        in_chans=spec.in_chans or meta["in_chans"],
        num_classes=spec.num_classes or meta.get("num_classes"),
    )
    trained = checkpoint is not None or spec.pretrained
    return Artifact(model, spec, "zoo", trained, spec.name)


def _weights(spec: ModelConfig) -> Artifact:
    model, size, in_chans = load_model_file(spec.name)
    meta = weights_meta(spec.name)
    classes = int(meta["num_classes"]) if "num_classes" in meta else None
    resolved = dataclasses.replace(spec, input_size=size, in_chans=in_chans, num_classes=classes)
    return Artifact(model, resolved, "weights", True, meta["model"])


def _slimmed(spec: ModelConfig) -> Artifact:
    plan = plan_of(spec.name)
    _, in_chans, size, _ = plan.input_shape
    resolved = dataclasses.replace(
        spec,
        input_size=size,
        in_chans=in_chans,
        num_classes=plan.model_config.get("num_classes", spec.num_classes),
    )
    path = Path(spec.name).resolve()
    return Artifact(load(path), resolved, "slimmed", True, f"{path.parent.name}/{path.name}")


def _deployed(spec: ModelConfig) -> Artifact:
    model = load_deployed(spec.name)
    if spec.input_size not in (None, model.input_size):
        raise DeepRebirthError(
            f"{spec.name} takes {model.input_size}x{model.input_size} inputs, "
            f"not {spec.input_size}x{spec.input_size}"
        )
    resolved = dataclasses.replace(spec, input_size=model.input_size, in_chans=model.in_chans)
    kind = "onnx" if is_onnx_file(spec.name) else "pte"
    return Artifact(model, resolved, kind, True, Path(spec.name).name)


_OPENERS = {"zoo": _zoo, "weights": _weights, "slimmed": _slimmed, "onnx": _deployed}
_OPENERS["pte"] = _deployed


def zoo_config(spec: ModelConfig) -> dict:
    """The keyword arguments the zoo builds the model with (what a plan records)."""
    return {k: v for k in ("num_classes", "in_chans") if (v := getattr(spec, k)) is not None}
