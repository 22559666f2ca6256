"""The learner interface shared by every meta-learner, RL and supervised alike.

A learner is anything with these methods (a ``typing.Protocol``, not a base class):

- ``meta_train_step(tasks) -> dict[str, float]``: one outer update from a batch of tasks; returns
  named metrics (losses as named terms) for the training loop to log.
- ``adapt(task, budget) -> adapted``: fast adaptation to one task; the result acts (RL) or
  predicts (supervised).
- ``state_dict()`` / ``load_state_dict()`` and ``to(device)``.

RL learners also offer ``adapt_many(tasks, budget, seed)``, the batched form the evaluation uses:
it adapts to many tasks at once and reports the return observed at every adaptation stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np
import torch
from torch import nn

from metarl.policies import Params, encode_obs, to_env_actions
from metarl.types import Task


@runtime_checkable
class Learner(Protocol):
    def meta_train_step(self, tasks: Sequence[Task]) -> dict[str, float]: ...

    def adapt(self, task: Task, budget: int) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def to(self, device: torch.device | str) -> Any: ...


@dataclass
class AdaptedPolicy:
    """A policy adapted to one task: a module evaluated with its own parameter dict.

    ``stage_returns[k]`` is the mean return of the episodes sampled at adaptation stage ``k``
    (after ``k`` gradient steps, or in episode ``k`` of a trial), the numbers an adaptation
    curve is made of.
    """

    policy: nn.Module
    params: Params | None
    observation_space: gymnasium.Space
    action_space: gymnasium.Space
    stage_returns: list[float] = field(default_factory=list)
    device: torch.device | str = "cpu"

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) for a single observation or a batch (numpy in, numpy out)."""
        single = np.asarray(obs).shape == self.observation_space.shape
        x = encode_obs(np.asarray(obs)[None] if single else obs, self.observation_space, self.device)
        with torch.no_grad():
            dist = self.policy.distribution(x, self.params)  # type: ignore[operator]
            if deterministic:
                a = dist.mode if not isinstance(self.action_space, gymnasium.spaces.Discrete) else dist.probs.argmax(-1)
            else:
                a = dist.sample()
        out = to_env_actions(a, self.action_space)
        return out[0] if single else out


@dataclass(frozen=True)
class AdaptationResult:
    """Adaptation to many tasks at once.

    ``stage_returns``: ``[n_tasks, budget + 1]`` mean episode return at each stage per task.
    ``adapted``: one adapted policy per task.
    ``stage_unit``: what a stage is, ``"steps"`` (stage ``k``: after ``k`` gradient steps) or
    ``"episodes"`` (stage ``k``: episode ``k + 1`` of a trial, for memory-based learners).
    """

    stage_returns: np.ndarray
    adapted: list[AdaptedPolicy]
    stage_unit: str = "steps"
