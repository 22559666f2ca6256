"""Algorithm configs: frozen dataclasses, validated up front, exposed on the command line.

Each field carries its one-line documentation in ``metadata["help"]`` (:func:`option`), which
becomes the ``--help`` text of the matching command-line flag. Presets are plain JSON files
whose keys are field names; an unknown key is an error with a suggestion.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def option(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a default and a one-line help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    return dataclasses.field(default=default, metadata={"help": help})


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a sequence, got {value!r}")
        item = args[0] if args else str
        return tuple(_coerce(name, v, item) for v in value)
    if tp is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return out
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], base: C | None = None) -> C:
    """Build ``cls`` from a plain dict (a preset file or parsed flags); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        raise ValueError(
            f"unknown option {k!r} for {cls.__name__}{suggest(k, names)}; valid options: {', '.join(names)}")
    values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


def load_preset(cls: type[C], path: str | Path) -> C:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {str(p)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a JSON object of option: value pairs")
    return config_from_dict(cls, data)


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, group_title: str) -> None:
    """One ``--field-name`` flag per config field (default ``None`` = keep the config's value)."""
    group = parser.add_argument_group(group_title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if typing.get_origin(tp) is tuple:
            group.add_argument(flag, dest=f"cfg_{f.name}", nargs="+", default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f"cfg_{f.name}", default=None, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (used by the configs' ``__post_init__``)."""
    if not condition:
        raise ValueError(message)


def require_at_least(config: Any, bound: int, *names: str) -> None:
    """``ValueError`` naming the first of ``config``'s fields ``names`` whose value is below ``bound``."""
    for name in names:
        value = getattr(config, name)
        require(value >= bound, f"{name} must be >= {bound}, got {value}")


def require_positive(config: Any, *names: str) -> None:
    """``ValueError`` naming the first of ``config``'s fields ``names`` whose value is not > 0."""
    for name in names:
        value = getattr(config, name)
        require(value > 0, f"{name} must be > 0, got {value}")


def require_choice(config: Any, name: str, choices: typing.Sequence[str]) -> None:
    """``ValueError`` unless ``config``'s field ``name`` is one of ``choices`` (with a close-match hint)."""
    value = getattr(config, name)
    require(value in choices,
            f"{name} must be one of {tuple(choices)}, got {value!r}{suggest(str(value), choices)}")
