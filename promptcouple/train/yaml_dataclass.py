"""A small engine that builds a tree of dataclasses from YAML, checking every key and type on the way.

It knows nothing of training: the schema (:mod:`promptcouple.train.config`) declares dataclasses
whose fields are ``bool``, ``int``, ``float``, ``str``, ``tuple`` (of numbers), ``dict``, a nested
dataclass (a section), or ``Optional`` of one of those, and this module turns mappings into them:

* an unknown key raises :class:`ConfigError` naming the dotted key and the closest known one;
* a value of the wrong type raises naming the key, the expected type and what was found;
* fields declared with :func:`path_field` hold paths, made absolute against a base directory
  (the YAML file's folder, or the working directory for command-line overrides).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from promptcouple.errors import ConfigError

# ``X | None`` builds a types.UnionType from Python 3.10 on; 3.9 knows only typing.Union.
_UNION_TYPES = (Union, types.UnionType) if hasattr(types, "UnionType") else (Union,)



def path_field(*, only_if_exists: bool = False, **kw: Any) -> Any:
    """A dataclass field holding a file or directory path (resolved against the base directory).

    ``only_if_exists``: the value may also be a plain tag (open_clip's ``pretrained: openai``);
    it is treated as a path only when the resolved path exists.
    """
    return dataclasses.field(metadata={"path": True, "only_if_exists": only_if_exists}, **kw)


def is_path_field(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("path"))


def read_yaml_mapping(path: Union[str, Path]) -> dict:
    """The top-level mapping of a YAML file (``{}`` for an empty file).

    Raises:
        ConfigError: Unreadable file, invalid YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``: the value is read as YAML.

    Raises:
        ConfigError: No ``=``, an empty key, or a value that is not valid YAML.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {err}") from None
    return key.strip(), value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating missing sections."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def unknown_key_message(dotted: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {dotted!r}{hint}; known keys here: {', '.join(known)}"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in _UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def resolve_paths(cls: type, raw: Any, base: Path, prefix: str = "", only: Optional[str] = None) -> Any:
    """A copy of ``raw`` with relative path values made absolute against ``base``.

    Args:
        cls: The dataclass ``raw`` describes.
        raw: Its mapping (anything else is returned unchanged: :func:`build` reports it).
        base: The directory relative paths are relative to.
        prefix: Dotted name of ``cls``'s section (``"data."``).
        only: Resolve only this dotted key (an override), leaving the others as they are.
    """
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        dotted = prefix + f.name
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out[f.name] = resolve_paths(tp, out[f.name], base, dotted + ".", only)
        elif is_path_field(f) and isinstance(out[f.name], str) and (only is None or only == dotted):
            value = os.path.expanduser(out[f.name])
            candidate = value if os.path.isabs(value) else str(base / value)
            if f.metadata.get("only_if_exists") and not os.path.exists(candidate):
                continue
            out[f.name] = candidate
    return out


def build(cls: type, raw: Any, prefix: str = "", base: Optional[Path] = None) -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and value.

    Args:
        cls: The dataclass.
        raw: Its mapping; missing keys keep their defaults.
        prefix: Dotted name of the section, for messages.
        base: Resolve relative paths against this directory first (``None``: leave them).

    Raises:
        ConfigError: Not a mapping, an unknown key, ``null`` for a non-optional field, or a
            value of the wrong type.
    """
    where = prefix.rstrip(".") or "the config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    if base is not None:
        raw = resolve_paths(cls, raw, base)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(unknown_key_message(prefix + str(key), str(key), sorted(fields)))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        tp, optional = _unwrap_optional(hints[name])
        dotted = prefix + name
        if value is None:
            if not optional:
                raise ConfigError(f"{dotted}: may not be null")
            kwargs[name] = None
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, dotted + ".")
        else:
            kwargs[name] = coerce(value, tp, dotted)
    return cls(**kwargs)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as field type ``tp``, or a :class:`ConfigError` naming ``key``."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if tp is float:
        # PyYAML reads "4e-3" (no dot) as a string; accept it as the number it means
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise bad("a number") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise bad("a number")
        if not math.isfinite(number):  # YAML's .inf / .nan: no setting means "infinitely"
            raise bad("a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, float, f"{key}[{i}]") for i, v in enumerate(value))
        raise bad("a list of numbers")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad("a mapping")
    raise AssertionError(f"unhandled field type {tp} for {key}")  # a bug in the schema, not user input
