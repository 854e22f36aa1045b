"""``--set section.key=value`` overrides and configs read back from dicts (checkpoints, Parquet).

Unknown keys and badly typed values raise :class:`UsageError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from typing import Any, Literal, get_args

from mislas.config.sections import DataConfig, EvalConfig, RunConfig, Stage1Config, Stage2Config
from mislas.errors import UsageError


def _allowed_keys(cfg: RunConfig) -> list[str]:
    keys: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(f"{f.name}.{sub.name}" for sub in fields(value))
        else:
            keys.append(f.name)
    return keys


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is Literal:
        return " or ".join(repr(a) for a in get_args(ann))
    return str(getattr(ann, "__name__", ann))


def _convert_union(key: str, text: str, args: tuple[Any, ...]) -> Any:
    """``X | Y | None``: None for none/null/empty where allowed, else the first arm that reads the text."""
    if text.lower() in ("none", "null", "") and type(None) in args:
        return None
    non_none = [a for a in args if a is not type(None)]
    for arm in non_none[:-1]:  # e.g. ``int | str``: the first type that reads the text
        try:
            return _convert(key, text, arm)
        except UsageError:
            pass
    try:
        return _convert(key, text, non_none[-1])
    except UsageError:
        if len(non_none) == 1:
            raise
        names = " or ".join(_type_name(a) for a in non_none)
        raise UsageError(f"--set {key}: cannot read {text!r} as {names}") from None


def _read_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_SCALARS: dict[Any, Any] = {bool: _read_bool, int: int, float: float, str: str}


def _convert(key: str, text: str, annotation: Any) -> Any:
    """Parse ``text`` into the field's declared type; errors name the key."""
    ann = annotation
    origin = typing.get_origin(ann)
    args = get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(key, text, args)
    if origin is Literal:
        if text in args:
            return text
        raise UsageError(f"--set {key}: {text!r} is not one of {', '.join(map(str, args))}")
    try:
        if ann in _SCALARS:
            return _SCALARS[ann](text)
        if origin is tuple:
            parts = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            inner = args[0] if args else str
            return tuple(_convert(key, t.strip(), inner) for t in parts)
    except ValueError:
        raise UsageError(f"--set {key}: cannot read {text!r} as {_type_name(ann)}") from None
    raise UsageError(f"--set {key}: unsupported type {ann}")


def apply_overrides(cfg: RunConfig, assignments: Iterable[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (``seed=1`` for top-level keys).

    A value the key's type cannot hold, or that its section refuses, raises UsageError
    naming the key.
    """
    for item in assignments:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        allowed = _allowed_keys(cfg)
        if key not in allowed:
            raise UsageError(f"--set: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if "." in key:
            section, name = key.split(".", 1)
            sub = getattr(cfg, section)
            ann = typing.get_type_hints(type(sub))[name]
            cfg = replace(cfg, **{section: replace(sub, **{name: _convert(key, text.strip(), ann)})})
        else:
            ann = typing.get_type_hints(RunConfig)[key]
            cfg = replace(cfg, **{key: _convert(key, text.strip(), ann)})
    return cfg


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` output (checkpoints, Parquet)."""
    def build(cls: type, values: Mapping[str, Any]) -> Any:
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                v = values[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    return RunConfig(
        data=build(DataConfig, raw.get("data", {})),
        stage1=build(Stage1Config, raw.get("stage1", {})),
        stage2=build(Stage2Config, raw.get("stage2", {})),
        eval=build(EvalConfig, raw.get("eval", {})),
        seed=raw.get("seed", 0),
        device=raw.get("device", "auto"),
        channels_last=raw.get("channels_last", True),
    )
