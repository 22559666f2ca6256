"""Typed values shared by every part of metarl.

Tasks are small, immutable, comparable, printable and JSON-serialisable values. Each task family
defines its own frozen dataclass deriving from :class:`Task` (one level, no deeper), e.g.::

    @dataclass(frozen=True)
    class NavigationTask(Task):
        goal: tuple[float, float]

``Task.to_json()`` / ``Task.from_json()`` round-trip exactly (floats are written with ``repr``
precision by the ``json`` module).

Supervised few-shot learning uses the same learners' interface with a task that is one
:class:`Episode`: a support set to adapt on and a query set to predict.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Task")


def _freeze(value: Any) -> Any:
    """Turn JSON lists back into (nested) tuples so tasks stay hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def flat_numbers(value: Any, where: str) -> list[float]:
    """The numbers of a (nested) task value, depth first; ``where`` names it in the error."""
    if isinstance(value, numbers.Real):  # bool, int, float and NumPy's scalar types
        return [float(value)]
    if isinstance(value, (tuple, list)):
        return [x for i, v in enumerate(value) for x in flat_numbers(v, f"{where}[{i}]")]
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r}), not a number: Task.features() flattens "
                    "numeric fields only; override features() on the task class to encode it")


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


@dataclasses.dataclass(frozen=True)
class Task:
    """Base of every task value. Subclasses are frozen dataclasses with tuple/float/int/str fields."""

    family: ClassVar[str] = "task"

    def to_dict(self) -> dict[str, Any]:
        # Fields are plain values (tuples, floats, ints, str), so a shallow dict gives the same JSON as
        # dataclasses.asdict without its deep copy (seconds for 1000 tabular MDPs with 600 floats each).
        return {"family": self.family, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def features(self) -> tuple[float, ...]:
        """The task's parameters as one flat tuple of floats: every field in declaration order, nested tuples
        depth first (a bandit's arm probabilities, a tabular MDP's mean rewards then transitions).

        Read by learners that may use privileged task information in training only, e.g. a task-informed
        critic (:class:`metarl.recurrent.RecurrentActorCritic`). A task with non-numeric fields raises
        ``TypeError``; such a class overrides this method.
        """
        return tuple(x for f in dataclasses.fields(self)
                     for x in flat_numbers(getattr(self, f.name), f"{type(self).__name__}.{f.name}"))

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


@dataclasses.dataclass(frozen=True)
class TrajectoryBatch:
    """A batch of episodes, time-major. ``T`` = steps, ``B`` = episodes (columns).

    Column ``b`` holds one episode from step 0; after the episode ends the column is padding
    (``mask == 0``, ``rewards == 0``). ``next_obs[t]`` is the true next observation of step ``t``
    (the final observation at a termination or truncation, never a reset observation), so values
    can be bootstrapped at truncation (STYLE.md habit 2).

    Fields:
        obs: ``[T, B, D]`` float, encoded observations (Discrete spaces one-hot).
        actions: ``[T, B, A]`` float for Box actions, ``[T, B]`` long for Discrete.
        log_probs: ``[T, B]`` log-probabilities of the actions under the behaviour policy.
        rewards: ``[T, B]``.
        terminated: ``[T, B]`` bool, true terminal state reached at step t.
        truncated: ``[T, B]`` bool, time limit reached at step t.
        mask: ``[T, B]`` float, 1 for real steps, 0 for padding.
        next_obs: ``[T, B, D]``.
        task_index: ``[B]`` long, index of each column's task in the list of tasks rolled out.
    """

    obs: Any
    actions: Any
    log_probs: Any
    rewards: Any
    terminated: Any
    truncated: Any
    mask: Any
    next_obs: Any
    task_index: Any

    @property
    def episode_end(self) -> Any:
        """``[T, B]`` float: 1 where an episode ends (terminated or truncated) or on padding."""
        return ((self.terminated | self.truncated).float() + (1.0 - self.mask)).clamp(max=1.0)

    @property
    def episode_returns(self) -> Any:
        """``[B]`` undiscounted return of each column's episode."""
        return (self.rewards * self.mask).sum(0)

    @property
    def lengths(self) -> Any:
        """``[B]`` number of real steps of each episode."""
        return self.mask.sum(0)

    @property
    def num_steps(self) -> int:
        return int(self.mask.sum().item())

    def to(self, device: Any) -> TrajectoryBatch:
        return TrajectoryBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def select(self, columns: Any) -> TrajectoryBatch:
        """The sub-batch of the given episode columns (index tensor or slice)."""
        out = {f.name: getattr(self, f.name)[:, columns] for f in dataclasses.fields(self) if f.name != "task_index"}
        return TrajectoryBatch(**out, task_index=self.task_index[columns])


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """One few-shot task: a support set to adapt on and a query set to predict (tensors, one device).

    Classification, ``N`` ways, ``K`` shots, ``Q`` queries per class, images ``[C, H, W]``:
        support_x: ``[N*K, C, H, W]`` float; support_y: ``[N*K]`` long labels in ``[0, N)`` (class-major as
        sampled, row ``i`` has label ``i // K``; learners go by the labels, never by the order).
        query_x: ``[N*Q, C, H, W]``; query_y: ``[N*Q]`` long.
        ways: ``N``; classes: the data set's class ids of labels ``0 .. N-1`` (provenance, disjointness checks).
    Regression, ``K`` support and ``Q`` query points of ``D_in -> D_out`` (sinusoid: 1 -> 1):
        support_x ``[K, D_in]``, support_y ``[K, D_out]`` float; query_x ``[Q, D_in]``, query_y ``[Q, D_out]``;
        ways: 0; classes: ``()``.

    A query set may be empty (``[0, ...]``, see :meth:`from_support`): adapting needs only the support set.
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any
    ways: int = 0
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, x, y in (("support", self.support_x, self.support_y), ("query", self.query_x, self.query_y)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{name}_x has {x.shape[0]} rows but {name}_y has {y.shape[0]}; they must match")
        if self.support_x.shape[1:] != self.query_x.shape[1:]:
            raise ValueError(f"support inputs {tuple(self.support_x.shape[1:])} and query inputs "
                             f"{tuple(self.query_x.shape[1:])} must have the same shape")
        if self.ways < 0 or (self.ways > 0 and self.support_y.ndim != 1):
            raise ValueError(f"a classification episode (ways={self.ways}) needs labels of shape [N*K], got "
                             f"support_y of shape {tuple(self.support_y.shape)}")
        if self.classes and len(self.classes) != self.ways:
            raise ValueError(f"classes names {len(self.classes)} class ids for {self.ways} ways")

    @property
    def is_classification(self) -> bool:
        return self.ways > 0

    @property
    def shots(self) -> int:
        """``K``: support examples per class (classification) or support points (regression)."""
        return self.support_x.shape[0] // self.ways if self.ways else self.support_x.shape[0]

    @property
    def queries(self) -> int:
        """``Q``: query examples per class (classification) or query points (regression)."""
        return self.query_x.shape[0] // self.ways if self.ways else self.query_x.shape[0]

    def to(self, device: Any) -> Episode:
        return dataclasses.replace(self, **{k: getattr(self, k).to(device)
                                            for k in ("support_x", "support_y", "query_x", "query_y")})

    @classmethod
    def from_support(cls, support_x: Any, support_y: Any, ways: int = 0) -> Episode:
        """An episode of a support set alone (what a user with new inputs to classify has): empty query set."""
        return cls(support_x, support_y, support_x[:0], support_y[:0], ways)
