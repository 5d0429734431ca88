"""Run configs: nested dataclasses loaded from YAML, with dotted `key=value` overrides from the command line.

Every section is a dataclass owned by the module that uses it; this file only knows how to fill any dataclass tree
from plain data and to say precisely what is wrong (unknown key, wrong type, missing path) in one line that names the
key and the file. Fields whose type is `Path` (or `Path | None`) must exist on disk when set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the file."""


def _loc(where: str) -> str:
    """The location prefix of a message: "file: ", or nothing for a section checked on its own."""
    return f"{where}: " if where else ""


def _origin_args(tp: Any) -> tuple[Any, tuple]:
    return typing.get_origin(tp), typing.get_args(tp)


def _describe(tp: Any) -> str:
    origin, args = _origin_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert `value` (from YAML or a command-line string) to type `tp`, or raise a ConfigError naming `key`."""
    origin, args = _origin_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{_loc(where)}'{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_loc(where)}'{key}' expects a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_loc(where)}'{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Path:
        if isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            if not path.exists():
                raise ConfigError(f"{_loc(where)}'{key}' points at {path}, which does not exist")
            return path
    elif isinstance(tp, type) and issubclass(tp, Path):
        return tp(value)
    else:
        raise ConfigError(f"{_loc(where)}'{key}' has an unsupported type {tp!r}")
    raise ConfigError(f"{_loc(where)}'{key}' expects {_describe(tp)}, got {value!r}")


def _build(cls: type[T], data: dict, prefix: str, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T is a dataclass by contract
    for name in data:
        if name not in fields:
            key = f"{prefix}.{name}" if prefix else name
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{_loc(where)}unknown key '{key}' (known keys here: {known})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, where)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_loc(where)}{prefix or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{_loc(where)}{exc}") from None
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"command line: '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse `key=value` strings; values are read as YAML scalars (`3`, `1e-4`, `true`, `null`, `[a, b]`)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value (e.g. adapter.rank=8)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict,)):
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def from_dict(cls: type[T], data: dict, where: str = "<dict>", prefix: str = "") -> T:
    """Build a dataclass tree from plain data, with the same checks as `load_config`; `prefix` is the dotted key of
    `data` in a larger config (named in errors), `where` the file it came from ("" when it is reported by a caller)."""
    return _build(cls, data or {}, prefix, where)


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read YAML at `path` (or start empty), apply dotted overrides, and build a validated `cls` tree."""
    data: dict = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config sections")
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(data, key, value)
    return _build(cls, data, "", where)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config tree (Paths as strings), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    tmp.replace(path)
