"""The meta-environment contract, train/test task splits, and custom task families.

Meta verbs (the convention shared by learn2learn, garage and ProMP) live on the *unwrapped* env:

- ``sample_tasks(n, rng=None, split="train") -> list[Task]``
- ``set_task(task)`` and ``get_task() -> Task``
- a task may also be passed as ``env.reset(options={"task": task})``.

Batched twins (``gymnasium.vector.VectorEnv``) hold one task per sub-env and add
``set_tasks(tasks)`` / ``get_tasks()``; ``reset(options={"tasks": [...]})`` works too.

Train/test splits
-----------------
Every task belongs to exactly one of the ``train`` and ``test`` splits, decided by a stable hash of
its JSON form (``task_split``): 20% of the prior's mass is ``test``. Sampling a split draws from the
family's prior and keeps only tasks of that split (rejection sampling), so both splits follow the
prior, and no task sampled for training can ever be a test task: "unseen" means unseen. Families
where it makes sense also offer ``split="ood"``, an out-of-distribution prior (documented per family).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from metarl.types import Task

Split = Literal["train", "test", "ood"]
SPLITS: tuple[str, ...] = ("train", "test", "ood")
TEST_FRACTION = 0.2

TaskT = TypeVar("TaskT", bound=Task)


def task_split(task: Task) -> Literal["train", "test"]:
    """The in-distribution split a task belongs to: a pure function of the task's value."""
    digest = hashlib.blake2b(task.to_json().encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "test" if u < TEST_FRACTION else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def sample_split(
    prior: Callable[[np.random.Generator], TaskT],
    n: int,
    rng: np.random.Generator,
    split: str,
    ood_prior: Callable[[np.random.Generator], TaskT] | None = None,
) -> list[TaskT]:
    """Draw ``n`` tasks of ``split`` from ``prior`` (or from ``ood_prior`` for ``split="ood"``)."""
    check_split(split)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "create one with numpy.random.default_rng(seed)"
        )
    if split == "ood":
        if ood_prior is None:
            raise ValueError("this task family has no out-of-distribution ('ood') split; use 'train' or 'test'")
        return [ood_prior(rng) for _ in range(n)]
    tasks: list[TaskT] = []
    while len(tasks) < n:
        task = prior(rng)
        if task_split(task) == split:
            tasks.append(task)
    return tasks


@runtime_checkable
class MetaEnv(Protocol):
    """What every task-distribution env offers on ``env.unwrapped``."""

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]: ...

    def set_task(self, task: Task) -> None: ...

    def get_task(self) -> Task: ...


@runtime_checkable
class MetaVectorEnv(Protocol):
    """A batched task env: ``num_envs`` sub-envs, each with its own task."""

    num_envs: int

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]: ...

    def set_tasks(self, tasks: Sequence[Task]) -> None: ...

    def get_tasks(self) -> list[Task]: ...
