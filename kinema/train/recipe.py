"""Reading recipes: a file (.toml / .json / .yaml) or command-line overrides into a dict, and a dict into
typed, checked dataclasses (``from_dict``), with errors that name the key path and what is accepted."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from kinema.config import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def read_recipe(path: Path) -> dict[str, Any]:
    """The raw dict in a recipe file; the format follows the extension."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path} is YAML but PyYAML is not installed (pip install pyyaml), "
                                  "or write the recipe as .toml / .json") from None
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise ConfigError(f"{path} is TOML, which needs Python 3.11+ or `pip install tomli`") from None
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r}: unknown extension {suffix!r}; accepted: .yaml .yml .toml .json")
    except ConfigError:
        raise
    except Exception as err:  # parser errors name line/column; keep them, drop the traceback
        raise ConfigError(f"config file {str(path)!r} could not be parsed: {err}") from None
    if data is None:
        return {}
    _check(isinstance(data, dict), f"config file {str(path)!r} must hold a mapping at the top, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str] | tuple[str, ...], schema: type | None = None) -> list[tuple[str, Any]]:
    """``["--optim.lr", "3e-4", "--data.path=x"]`` -> ``[("optim.lr", 3e-4), ("data.path", "x")]``.

    Values are JSON when they parse (numbers, true/false/null, lists, mappings), else the text; with ``schema``
    (the root dataclass), a key whose field is annotated ``str`` (or ``str | None``) takes the text as given,
    so ``--out_dir 2024`` is the folder "2024", not the number 2024.
    """
    out: list[tuple[str, Any]] = []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        _check(arg.startswith("--") and len(arg) > 2, f"override {arg!r} must look like --key value or --key=value")
        key = arg[2:]
        bare = False
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 2
        else:  # a bare flag: --log.progress
            raw, bare = "true", True
            i += 1
        key = key.replace("-", "_")
        tp = field_type(schema, key) if schema is not None else None
        if tp is not None and _is_text(tp):
            _check(not bare, f"override --{key} needs a value (text): --{key} VALUE or --{key}=VALUE")
            optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
            value = None if optional and raw.strip().lower() in _NULLS else raw
        else:
            value = parse_value(raw)
        out.append((key, value))
    return out


_NULLS = ("none", "null", "~")


def _is_text(tp: Any) -> bool:
    """Whether annotation ``tp`` is ``str`` or ``str | None``: a field whose override is taken as plain text."""
    if tp is str:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)] == [str]
    return False


def field_type(cls: type, dotted: str) -> Any:
    """The annotation of the field ``dotted`` ("data.path") under dataclass ``cls``; None when the path leaves
    the dataclasses (a key inside a mapping such as ``model_config``) or names no field (``from_dict`` then
    refuses it with the accepted keys)."""
    tp: Any = cls
    for part in dotted.split("."):
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # an optional section: DistillConfig | None
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = options[0] if len(options) == 1 else None
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints or part not in {f.name for f in dataclasses.fields(tp)}:
            return None
        tp = hints[part]
    return tp


def parse_value(raw: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false/null, lists, dicts), else the string."""
    lowered = raw.strip().lower()
    if lowered in _NULLS:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def set_key(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        _check(isinstance(nxt, dict), f"override --{dotted}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def from_dict(cls, data: Any, where: str):
    """An instance of dataclass ``cls`` from ``data``; unknown keys and wrong types name the key path."""
    label = where or "config"
    _check(isinstance(data, dict), f"{label} must be a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(_join(where, k) for k in unknown)}; "
                          f"accepted{' in ' + where if where else ''}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing (e.g. a bucket without frames)
        raise ConfigError(f"{label}: {err}; accepted keys: {', '.join(sorted(fields))}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def coerce(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked (and gently converted: YAML's "1e-4" string, int -> float) against annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {options}")
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, key)
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        item_types = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(value)
        if not (len(args) == 2 and args[1] is Ellipsis):
            _check(len(value) == len(args), f"{key} must have {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(coerce(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))
    if origin is dict:
        _check(isinstance(value, dict), f"{key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        _check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
               f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), f"{key} must be a string, got {value!r}")
        return value
    return value
