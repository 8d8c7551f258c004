"""Typed configurations as data: dataclasses read from and written to TOML.

A configuration is a tree of dataclasses whose fields carry their help text
(:func:`option`). :func:`from_dict` builds one from plain data (a parsed TOML file), with
unknown keys and wrong types reported as one line naming the key; :func:`to_toml` writes
it back (``tomllib`` reads, ``tomli_w`` writes; ``None`` means "the default" and is left
out, since TOML has no null).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import dacite
import tomli_w

from .errors import DeepRebirthError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(DeepRebirthError):
    """A configuration with an unknown key, a value of the wrong type, or out of range."""


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs) -> Any:
    """A dataclass field with its help text (shown in the generated key reference)."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _nested(tp: Any) -> type | None:
    """The dataclass a field holds, if it holds one."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return None


def _check_keys(cls: type, data: Any, prefix: str) -> None:
    if not isinstance(data, dict):
        what = f"[{prefix[:-1]}]" if prefix else "a recipe"
        raise ConfigError(f"{what} must be a table, not {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}{key} (known here: {', '.join(names)})")
        sub = _nested(hints[key])
        if sub is not None:
            _check_keys(sub, value, f"{prefix}{key}.")


def from_dict(cls: type[T], data: dict) -> T:
    """``cls`` built from ``data``; unknown keys and wrong types are a :class:`ConfigError`."""
    _check_keys(cls, data, "")
    try:
        # An int where a float is expected is fine (TOML writes 1.0 as 1.0, users write 1).
        return dacite.from_dict(
            cls, data, config=dacite.Config(strict=True, type_hooks={float: _as_float})
        )
    except dacite.WrongTypeError as e:
        raise ConfigError(
            f"{e.field_path} should be {_type_name(e.field_type)}, not {e.value!r}"
        ) from None
    except dacite.MissingValueError as e:
        raise ConfigError(f"missing key {e.field_path}") from None


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, "nothing" if tp is type(None) else getattr(tp, "__name__", str(tp))
    )


def to_dict(config: Any) -> dict:
    """Plain data of ``config``, ``None`` values left out."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return value

    return clean(dataclasses.asdict(config))


def to_toml(config: Any, header: str = "") -> str:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + tomli_w.dumps(to_dict(config))


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def set_key(data: dict, assignment: str) -> None:
    """Apply ``key.path=value`` to ``data``; the value is read as TOML (``3``, ``true``,
    ``"x"``, ``["a", "b"]``), or else taken as a string."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE, not {assignment!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])} is not a table")
    node[leaf] = value


def field_of(cls: type, key: str) -> dataclasses.Field:
    """The field a dotted key (``tune.max_batches``) names in the configuration ``cls``."""
    *parents, leaf = key.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return next(f for f in dataclasses.fields(cls) if f.name == leaf)


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def nest(flat: dict[str, Any]) -> dict:
    """``{"tune.lr": 1e-3}`` as ``{"tune": {"lr": 1e-3}}``."""
    data: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def reference(cls: type, prefix: str = "") -> list[str]:
    """Markdown lines describing every key of ``cls``: section tables, then their keys."""
    hints = typing.get_type_hints(cls)
    plain, sections = [], []
    for f in dataclasses.fields(cls):
        sub = _nested(hints[f.name])
        if sub is not None:
            sections.append((f, sub))
            continue
        if f.default is not dataclasses.MISSING:
            default = (
                "(none)"
                if f.default is None
                else f"`{tomli_w.dumps({'v': f.default})[4:].strip()}`"
            )
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{tomli_w.dumps({'v': f.default_factory()})[4:].strip()}`"
        else:
            default = "required"
        help_ = f.metadata.get("help", "").replace("|", "\\|")
        plain.append(f"| `{prefix}{f.name}` | {_type_name(hints[f.name])} | {default} | {help_} |")
    lines = []
    if plain:
        lines += ["| key | type | default | meaning |", "|---|---|---|---|", *plain, ""]
    for f, sub in sections:
        lines += [f"### `[{prefix}{f.name}]`", ""]
        if f.metadata.get("help"):
            lines += [f.metadata["help"], ""]
        lines += reference(sub, f"{prefix}{f.name}.")
    return lines
