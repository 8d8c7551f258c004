"""The model registry: ``register_model``, ``get_model``, ``list_models``.

Four sources of models, one entry point:

* models defined in this package (``bvlc_googlenet``, ``bvlc_alexnet``), registered with
  :func:`register_model` together with facts about them (``ModelEntry.meta``);
* every torchvision classification model, by its torchvision name;
* every timm model, as ``timm:NAME`` (the optional ``deeprebirth[timm]``);
* a user's own model, as ``package.module:factory``.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from ..errors import CheckpointError, DeepRebirthError, UnknownModelError
from .weights import apply_state_dict, read_state_dict


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    #: Facts about the model: default input size, channels, classes, where it comes from.
    meta: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, **meta: Any) -> Callable:
    """Decorator registering a model factory under ``name`` (default: the function name).

    ``meta`` holds facts shown by ``deeprebirth models`` and used as defaults, e.g.
    ``input_size=224``. Registering a name twice is an error.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelEntry(key, fn, {"input_size": 224, "in_chans": 3, **meta})
        return fn

    return wrap


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models(pattern: str | None = None) -> list[str]:
    """Names ``get_model`` accepts: this package's models first, then torchvision's.

    >>> "bvlc_googlenet" in list_models()
    True
    """
    names = list(_REGISTRY) + [n for n in _torchvision_names() if n not in _REGISTRY]
    if pattern:
        names = [n for n in names if pattern in n]
    return names


#: The prefix naming a timm model: ``timm:repvgg_a0``.
TIMM_PREFIX = "timm:"


def _timm():
    """timm, or a one-line error saying how to install it (an optional dependency)."""
    try:
        import timm  # optional: only timm:NAME models need it
    except ImportError as e:
        raise DeepRebirthError(
            "timm models need timm: pip install 'deeprebirth[timm]' (or pip install timm)"
        ) from e
    return timm


def _timm_model(name: str, pretrained: bool, **config: Any) -> nn.Module:
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise UnknownModelError(f"timm has no model {name!r}{hint}")
    if pretrained:
        raise CheckpointError(
            f"deeprebirth never downloads weights: pass timm:{name}'s weights with --checkpoint "
            "(a .safetensors file or a state dict)"
        )
    return timm.create_model(name, pretrained=False, **config)


def model_meta(name: str) -> dict[str, Any]:
    """Facts about a model (input size, channels, source); defaults for torchvision/user."""
    if name in _REGISTRY:
        return dict(_REGISTRY[name].meta)
    if name.startswith(TIMM_PREFIX):
        cfg = _timm().models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
        size = cfg.input_size[-1] if cfg is not None and cfg.input_size else 224
        return {"input_size": size, "in_chans": 3, "source": "timm"}
    if ":" in name:
        return {"input_size": 224, "in_chans": 3, "source": "user"}
    size = 299 if name.startswith("inception") else 224
    return {"input_size": size, "in_chans": 3, "source": "torchvision"}


def _user_model(spec: str, **config: Any) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DeepRebirthError(f"cannot import {module_name!r} for model {spec!r}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise DeepRebirthError(f"module {module_name!r} has no attribute {attr!r}")
    model = factory(**config)
    if not isinstance(model, nn.Module):
        raise DeepRebirthError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _torchvision_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default weights for ``name``, only if already in the local torch cache."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights for {name} are not in the local cache ({path}); deeprebirth "
            "never downloads weights: put the file there or pass --checkpoint"
        )
    return read_state_dict(path)


def adapt_input_channels(model: nn.Module, in_chans: int, name: str = "model") -> None:
    """Rebuild the first conv of a 3-channel model for ``in_chans`` input channels.

    Its weights are kept as the gray image would see them: for one channel, the sum of the
    three RGB filters (the first conv then computes what it did on a gray image repeated on
    three channels); otherwise the RGB filters cycled over the new channels and rescaled.
    """
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first[1].in_channels == 3 and first[1].groups == 1:
        path, conv = first
        new = nn.Conv2d(
            in_chans,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            w = conv.weight
            if in_chans == 1:
                new.weight.copy_(w.sum(dim=1, keepdim=True))
            else:
                new.weight.copy_(w[:, [i % 3 for i in range(in_chans)]] * (3 / in_chans))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        model.set_submodule(path, new)
        return
    raise DeepRebirthError(
        f"{name}: cannot find a first 3-channel conv to take {in_chans} channels"
    )


def get_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    **config: Any,
) -> nn.Module:
    """Build a model by name, in eval mode, optionally with weights.

    Args:
        name: a registered name (``list_models()``), a torchvision model name,
            ``timm:NAME`` for a timm model, or ``package.module:factory`` for a user's own
            model.
        checkpoint: a ``.safetensors`` file or a PyTorch state dict (loaded with
            ``weights_only=True``; pickled code is refused).
        pretrained: torchvision weights from the local torch cache (never downloaded).
        config: passed to the factory, e.g. ``num_classes=10, in_chans=1``.

    Example:
        >>> model = get_model("bvlc_googlenet", num_classes=10)
    """
    if name in _REGISTRY:
        model = _REGISTRY[name].factory(**config)
    elif name.startswith(TIMM_PREFIX):
        model = _timm_model(name.removeprefix(TIMM_PREFIX), pretrained, **config)
    elif ":" in name:
        model = _user_model(name, **config)
    elif name in _torchvision_names():
        in_chans = config.pop("in_chans", None) or 3  # torchvision builds 3-channel models
        with warnings.catch_warnings():  # e.g. googlenet's notice about its init scheme
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, weights=None, **config)
        if pretrained:
            apply_state_dict(model, _torchvision_pretrained_state(name), source=f"{name} weights")
        if in_chans != 3:
            adapt_input_channels(model, in_chans, name)
    else:
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint} (`deeprebirth models` lists them all; "
            "timm's: timm:NAME; your own model: package.module:factory)"
        )
    if pretrained and name in _REGISTRY:
        raise DeepRebirthError(f"{name} has no pretrained weights; pass --checkpoint")
    if checkpoint is not None:
        apply_state_dict(model, read_state_dict(checkpoint), source=str(checkpoint))
    return model.eval()
