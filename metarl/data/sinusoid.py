"""Sinusoid regression tasks (Finn et al. 2017, sec. 5.1; the MAML definition).

A task is a sine wave ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]`` and phase
``phi ~ U[0, pi]``; inputs ``x ~ U[-5, 5]``. An episode of a task draws ``K`` support points and ``Q``
query points, all i.i.d. from ``U[-5, 5]``, without noise. Support and query are ``[K, 1]`` and
``[Q, 1]`` float32 tensors.

Choices where codebases differ, and ours:

- Meta-training episodes: MAML's ``data_generator.py`` draws ``2K`` points per task, ``K`` for the
  inner step and ``K`` for the meta-loss; ``train_queries`` defaults to the same ``K``.
- Evaluation: the MAML paper plots fits after 1 and 10 steps on a fixed grid, the Meta-SGD paper
  reports the query MSE after one step; we draw ``Q = 100`` query points per test task (``queries``)
  and report the mean MSE over >= 600 test tasks with a 95% CI.
- Splits: the prior is continuous, so a test task is unseen with probability one anyway; as for the
  RL task families (:func:`metarl.tasks.task_split`), a task's split is still a pure function of its
  value (20% of the prior's mass is ``test``), so train and test tasks provably never coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from metarl.tasks import sample_split
from metarl.types import Episode, Task

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


@dataclass(frozen=True)
class SinusoidTask(Task):
    family: ClassVar[str] = "sinusoid"
    amplitude: float
    phase: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.amplitude * np.sin(x - self.phase)


def sample_sinusoid(rng: np.random.Generator) -> SinusoidTask:
    """One task from the MAML prior."""
    return SinusoidTask(amplitude=float(rng.uniform(*AMPLITUDE)), phase=float(rng.uniform(*PHASE)))


def sinusoid_episode(task: SinusoidTask, shots: int, queries: int, rng: np.random.Generator,
                     device: torch.device | str = "cpu") -> Episode:
    """``shots`` support and ``queries`` query points of ``task`` (``[K, 1]`` and ``[Q, 1]``)."""
    x = rng.uniform(*INPUT_RANGE, size=(shots + queries, 1))
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(task(x), dtype=torch.float32, device=device)
    return Episode(xt[:shots], yt[:shots], xt[shots:], yt[shots:])


class SinusoidTasks:
    """Sinusoid episodes for the training loop: ``sample_tasks(n, rng, split)`` with ``split`` train or test."""

    held_out_split = "test"
    kind = "regression"
    input_shape = (1,)
    name = "sinusoid"

    def __init__(self, shots: int, queries: int = 100, train_shots: int | None = None,
                 train_queries: int | None = None, device: torch.device | str = "cpu") -> None:
        self.shots, self.queries = shots, queries
        self.train_shots = train_shots if train_shots is not None else shots
        self.train_queries = train_queries if train_queries is not None else self.train_shots
        for name in ("shots", "train_shots", "queries", "train_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"sinusoid {name} must be >= 1, got {getattr(self, name)}")
        self.device = device

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Episode]:
        tasks = sample_split(sample_sinusoid, n, rng, split)
        k, q = (self.train_shots, self.train_queries) if split == "train" else (self.shots, self.queries)
        return [sinusoid_episode(t, k, q, rng, self.device) for t in tasks]


__all__ = ["SinusoidTask", "SinusoidTasks", "sample_sinusoid", "sinusoid_episode"]
