"""Batched episode collection over task vector envs, on CPU or CUDA.

All episodes of all tasks of a meta-batch are stepped together in one batched env
(``num_envs = n_tasks * episodes_per_task``), and the policy acts on the whole batch in one call.
Each column of the resulting :class:`~metarl.types.TrajectoryBatch` is exactly one episode: the
env runs until every column has ended (or ``max_steps``), and steps after a column's end (which
the NEXT_STEP autoreset of the vector env spends on resetting it) are masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
import torch

from metarl.policies import encode_obs, to_env_actions
from metarl.types import Task, TrajectoryBatch

# act_fn(obs [B, D]) -> (actions [B, ...], log_probs [B]) on the policy's device.
ActFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def episode_horizon(env: Any, default: int | None = None) -> int:
    """The maximum episode length of a (vector) env: its ``horizon`` attribute, its spec's
    ``max_episode_steps``, or ``default``; error if none is known."""
    for candidate in (env, getattr(env, "unwrapped", None)):
        h = getattr(candidate, "horizon", None)
        if isinstance(h, (int, np.integer)) and h > 0:
            return int(h)
    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps:
        return int(spec.max_episode_steps)
    if default is not None:
        return default
    raise ValueError(
        "cannot tell the episode horizon of this env (no `horizon` attribute, no spec.max_episode_steps); "
        "pass max_steps / --horizon explicitly"
    )


def repeat_tasks(tasks: Sequence[Task], episodes_per_task: int) -> list[Task]:
    """``[t0, t0, ..., t1, t1, ...]``: column ``b`` belongs to task ``b // episodes_per_task``."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    return [t for t in tasks for _ in range(episodes_per_task)]


def collect_episodes(
    venv: gymnasium.vector.VectorEnv,
    act_fn: ActFn,
    tasks: Sequence[Task],
    episodes_per_task: int,
    seed: int,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
) -> TrajectoryBatch:
    """Run one episode in every column; ``venv.num_envs`` must equal ``len(tasks) * episodes_per_task``.

    The env is reset with ``seed`` (sub-env ``i`` gets ``seed + i``) and its tasks set first.
    """
    columns = repeat_tasks(tasks, episodes_per_task)
    if venv.num_envs != len(columns):
        raise ValueError(
            f"the vector env has {venv.num_envs} sub-envs but {len(tasks)} tasks x {episodes_per_task} episodes "
            f"= {len(columns)} columns are needed; build it with num_envs={len(columns)}"
        )
    horizon = max_steps if max_steps is not None else episode_horizon(venv)
    obs_space = venv.single_observation_space
    act_space = venv.single_action_space
    venv.set_tasks(columns)  # type: ignore[attr-defined]
    raw_obs, _ = venv.reset(seed=seed)
    b = len(columns)
    obs_l, act_l, logp_l, rew_l, term_l, trunc_l, mask_l, next_l = [], [], [], [], [], [], [], []
    alive = torch.ones(b, dtype=torch.bool, device=device)
    obs = encode_obs(raw_obs, obs_space, device)
    for _ in range(horizon):
        with torch.no_grad():
            actions, log_probs = act_fn(obs)
        raw_next, reward, terminated, truncated, _ = venv.step(to_env_actions(actions, act_space))
        next_obs = encode_obs(raw_next, obs_space, device)
        term = torch.as_tensor(terminated, device=device)
        trunc = torch.as_tensor(truncated, device=device)
        m = alive.float()
        obs_l.append(obs)
        act_l.append(actions)
        logp_l.append(log_probs)
        rew_l.append(torch.as_tensor(reward, dtype=torch.float32, device=device) * m)
        term_l.append(term & alive)
        trunc_l.append(trunc & alive)
        mask_l.append(m)
        next_l.append(next_obs)
        alive = alive & ~(term | trunc)
        obs = next_obs
        if not bool(alive.any()):
            break
    else:
        # Episodes still running at max_steps are cut there: a truncation (bootstrapped), not a termination.
        trunc_l[-1] = trunc_l[-1] | alive
    return TrajectoryBatch(
        obs=torch.stack(obs_l), actions=torch.stack(act_l), log_probs=torch.stack(logp_l),
        rewards=torch.stack(rew_l), terminated=torch.stack(term_l), truncated=torch.stack(trunc_l),
        mask=torch.stack(mask_l), next_obs=torch.stack(next_l),
        task_index=torch.arange(b, device=device) // episodes_per_task,
    )


class TaskEnvs:
    """One task family, its spaces and horizon, and cached batched envs (one per batch size).

    ``spec`` is anything :func:`metarl.registry.make_env` accepts: a registered id such as
    ``"metarl/Navigation2D-v0"`` or ``"package.module:Name"`` for a custom family.
    """

    def __init__(self, spec: str, env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None) -> None:
        from metarl.registry import make_env  # local: registry imports gymnasium ids lazily

        self.spec = spec
        self.env_kwargs = dict(env_kwargs or {})
        self.env = make_env(spec, **self.env_kwargs)
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.horizon = max_steps if max_steps is not None else episode_horizon(self.env)
        self._vector: dict[int, gymnasium.vector.VectorEnv] = {}

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        return list(self.env.unwrapped.sample_tasks(n, rng=rng, split=split))  # type: ignore[attr-defined]

    def vector(self, num_envs: int) -> gymnasium.vector.VectorEnv:
        if num_envs not in self._vector:
            from metarl.registry import make_vector_env

            self._vector[num_envs] = make_vector_env(self.spec, num_envs, **self.env_kwargs)
        return self._vector[num_envs]

    def collect(self, act_fn: ActFn, tasks: Sequence[Task], episodes_per_task: int, seed: int,
                device: torch.device | str = "cpu") -> TrajectoryBatch:
        venv = self.vector(len(tasks) * episodes_per_task)
        return collect_episodes(venv, act_fn, tasks, episodes_per_task, seed, self.horizon, device)

    def close(self) -> None:
        self.env.close()
        for v in self._vector.values():
            v.close()
        self._vector.clear()


def task_policy_act_fn(policy: torch.nn.Module, stacked: dict[str, torch.Tensor] | None, n_tasks: int) -> ActFn:
    """An ``act_fn`` sampling each task's columns from that task's own parameters.

    ``stacked`` holds parameters with a leading task axis ``[N, ...]`` (``None``: the module's own
    parameters for every task). Columns are grouped by task: ``[N * E, D] -> [N, E, D]``.
    """
    from metarl.functional import task_distribution

    def act(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if stacked is None:
            dist = policy.distribution(obs)  # type: ignore[operator]
            a = dist.sample()
            return a, dist.log_prob(a)
        x = obs.reshape(n_tasks, obs.shape[0] // n_tasks, *obs.shape[1:])
        dist = task_distribution(policy, stacked, x)
        a = dist.sample()
        logp = dist.log_prob(a)
        return a.reshape(obs.shape[0], *a.shape[2:]), logp.reshape(obs.shape[0])

    return act
