"""Typed dataclass configs: YAML/dict loading, dotted overrides, validation.

Every config section of the project is a ``@dataclass`` whose fields carry type annotations and
defaults (the defaults are the one place where defaults live). ``from_dict`` builds a section from
plain data and checks every key and type on the way, so a typo or a wrong type fails at load time
with the dotted key that is wrong and what would be allowed. After construction each dataclass may
define ``validate(self, path)`` for cross-field rules; it raises ``ConfigError`` naming the key.

Why not OmegaConf/pydantic: OmegaConf's structured configs do not give "allowed values" messages
for ``Literal`` fields and pull in antlr; pydantic would work but adds a second type system next to
dataclasses that megatron-core already uses (``TransformerConfig``). This module is ~150 lines.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from training.errors import FLMError


class ConfigError(FLMError, ValueError):
    """A config value is wrong. ``key`` is the dotted path, ``source`` the file if known."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key '{key}': {message}")


def join_key(path: str, key: str) -> str:
    """Dotted key of ``key`` inside section ``path`` (for error messages)."""
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"got {value!r}; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(path, f"must not be null; expected {_type_name(tp)}")
        candidates = [arg for arg in args if arg is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own error names the inner key and the fix
            return _convert(candidates[0], value, path)
        for arg in candidates:
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"got {value!r}; expected {_type_name(tp)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping (section), got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, join_key(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} at {path}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            join_key(path, unknown[0]),
            f"unknown key; allowed keys here: {', '.join(sorted(fields))}",
        )
    kwargs = {name: _convert(hints[name], value, join_key(path, name)) for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for printing, saving into checkpoints and round trips)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override must look like key.subkey=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"cannot parse override value {raw!r}: {err}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (sections are created as needed)."""

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):  # `stages.1.tokens=...` indexes a list
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(".".join(keys[: i + 1]), f"list index must be 0..{len(node) - 1}")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
                continue
            if last:
                node[key] = value
                break
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(".".join(keys[: i + 1]), f"is a value, not a section; cannot set {text!r}")
            node = child
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", f"config file not found: {path}", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError("<file>", f"invalid YAML: {err}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("<file>", "the top level must be a mapping of sections", source=str(path))
    return data
