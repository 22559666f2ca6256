"""Typed values shared by every part of metarl.

Tasks are small, immutable, comparable, printable and JSON-serialisable values. Each task family
defines its own frozen dataclass deriving from :class:`Task` (one level, no deeper), e.g.::

    @dataclass(frozen=True)
    class NavigationTask(Task):
        goal: tuple[float, float]

``Task.to_json()`` / ``Task.from_json()`` round-trip exactly (floats are written with ``repr``
precision by the ``json`` module).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Task")


def _freeze(value: Any) -> Any:
    """Turn JSON lists back into (nested) tuples so tasks stay hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Task:
    """Base of every task value. Subclasses are frozen dataclasses with tuple/float/int/str fields."""

    family: ClassVar[str] = "task"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        data = dict(data)
        family = data.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(
                f"cannot load a {family!r} task as {cls.__name__} (family {cls.family!r}); "
                f"use the task class of family {family!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; expected {sorted(names)}")
        return cls(**{k: _freeze(v) for k, v in data.items()})

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))
