"""Uniform random policy: the floor of every adaptation curve.

Actions are drawn uniformly from the action space (in the policies' normalised units ``[-1, 1]``
for a bounded ``Box``, see :func:`metarl.policies.to_env_actions`; Gaussian N(0, 1) per dimension
for an unbounded one). It learns nothing: ``meta_train_step`` only measures the return of the
random policy on the training tasks, so it can run through the same scripts as every learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch

from metarl.config import option, require_at_least
from metarl.learner import AdaptationResult, AdaptedPolicy
from metarl.pg import by_task
from metarl.rollout import ActFn, TaskEnvs
from metarl.types import Task


@dataclass(frozen=True)
class RandomConfig:
    meta_batch_size: int = option(20, "tasks per (measurement-only) iteration")
    episodes_per_task: int = option(2, "episodes per task per iteration")
    adapt_episodes: int = option(20, "episodes per task at each evaluation stage")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size", "episodes_per_task", "adapt_episodes")


class UniformPolicy(torch.nn.Module):
    """A parameter-free module with the ``distribution`` interface of metarl's policies."""

    def __init__(self, action_space: gymnasium.Space) -> None:
        super().__init__()
        self.action_space = action_space

    def distribution(self, obs: torch.Tensor, params: Any = None) -> torch.distributions.Distribution:
        space, batch = self.action_space, obs.shape[:-1]
        if isinstance(space, gymnasium.spaces.Discrete):
            return torch.distributions.Categorical(logits=torch.zeros(*batch, int(space.n), device=obs.device))
        assert isinstance(space, gymnasium.spaces.Box)
        dim = int(space.shape[0])
        if space.is_bounded("both"):
            base: torch.distributions.Distribution = torch.distributions.Uniform(
                torch.full((*batch, dim), -1.0, device=obs.device), torch.full((*batch, dim), 1.0, device=obs.device))
        else:
            base = torch.distributions.Normal(torch.zeros(*batch, dim, device=obs.device), 1.0)
        return torch.distributions.Independent(base, 1)


class RandomAgent:
    def __init__(self, envs: TaskEnvs, config: RandomConfig, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.envs, self.config, self.seed, self.device = envs, config, seed, torch.device(device)
        self.policy = UniformPolicy(envs.action_space)
        self.steps_done = 0

    def _act_fn(self) -> ActFn:
        def act(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            dist = self.policy.distribution(obs)
            a = dist.sample()
            return a, dist.log_prob(a)
        return act

    def meta_train_step(self, tasks: Sequence[Task]) -> dict[str, float]:
        batch = self.envs.collect(self._act_fn(), tasks, self.config.episodes_per_task,
                                  seed=self.seed * 1_000_003 + self.steps_done * 7919, device=self.device)
        self.steps_done += 1
        return {"rollout/return_mean": float(batch.episode_returns.mean()),
                "rollout/env_steps": float(batch.num_steps)}

    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None) -> AdaptationResult:
        e = episodes_per_step or self.config.adapt_episodes
        n = len(tasks)
        stage_returns = np.zeros((n, budget + 1))
        for k in range(budget + 1):
            batch = self.envs.collect(self._act_fn(), tasks, e, seed=seed + 7919 * k, device=self.device)
            stage_returns[:, k] = by_task(batch.episode_returns[None], n).mean(dim=(1, 2)).cpu().numpy()
        adapted = [AdaptedPolicy(self.policy, None, self.envs.observation_space, self.envs.action_space,
                                 stage_returns[i].tolist(), self.device) for i in range(n)]
        return AdaptationResult(stage_returns, adapted)

    def adapt(self, task: Task, budget: int, seed: int = 0) -> AdaptedPolicy:
        return self.adapt_many([task], budget, seed).adapted[0]

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.seed = int(state["steps_done"]), int(state["seed"])

    def to(self, device: torch.device | str) -> RandomAgent:
        self.device = torch.device(device)
        return self
