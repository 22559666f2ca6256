"""Batched episode collection over task vector envs, on CPU or CUDA.

All episodes of all tasks of a meta-batch are stepped together in one batched env
(``num_envs = n_tasks * episodes_per_task``), and the policy acts on the whole batch in one call.
Each column of the resulting :class:`~metarl.types.TrajectoryBatch` is exactly one episode: the
env runs until every column has ended (or ``max_steps``), and steps after a column's end (which
the NEXT_STEP autoreset of the vector env spends on resetting it) are masked out.
:func:`collect_packed_episodes` fills the same batch from fewer sub-envs, each running several
episodes back to back, so early-ending episodes do not leave their sub-env idle.
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


def collect_packed_episodes(
    venv: gymnasium.vector.VectorEnv,
    act_fn: ActFn,
    tasks: Sequence[Task],
    episodes_per_task: int,
    seed: int,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
) -> TrajectoryBatch:
    """``episodes_per_task`` complete episodes of every task, run back to back on fewer sub-envs.

    ``venv.num_envs = len(tasks) * S`` with ``1 <= S <= episodes_per_task`` sub-envs ("slots") per task.
    Each slot runs its task's episodes one after another through the env's autoreset; when an episode
    ends, the slot starts the next episode of its task that no slot has started yet, or idles once all
    ``episodes_per_task`` have started. The result is the same :class:`~metarl.types.TrajectoryBatch` as
    :func:`collect_episodes` (column ``b`` is one episode from row 0, of task ``b // episodes_per_task``),
    so every consumer is unchanged; what changes is the cost. With one sub-env per episode the batch
    steps until its longest episode ends and the columns of early-ending episodes idle (CartPole: most
    of them); packed, a slot idles only at the end of its task's budget.

    The rows a vector env spends on an autoreset (the step after an episode's end, action ignored) are
    not recorded. Episodes must be ended by the env itself (terminated, or truncated at its time limit):
    an episode that reaches ``max_steps`` rows without the env ending it cannot be continued on that
    slot, which is an error here (use ``S = episodes_per_task``, i.e. :func:`collect_episodes`, to cut
    episodes shorter than the env's own limit).

    Sub-env ``i`` is reset with ``seed + i``; its later episodes continue that sub-env's random stream.
    """
    n = len(tasks)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if n < 1 or venv.num_envs % n:
        raise ValueError(f"the vector env has {venv.num_envs} sub-envs, which is not a whole number of sub-envs "
                         f"for each of {n} tasks; build it with num_envs = {max(n, 1)} x (sub-envs per task)")
    slots = venv.num_envs // n
    if slots > episodes_per_task:
        raise ValueError(f"{slots} sub-envs per task for {episodes_per_task} episodes per task: a slot would "
                         f"have no episode to run; use at most {episodes_per_task} sub-envs per task")
    if slots == episodes_per_task:
        return collect_episodes(venv, act_fn, tasks, episodes_per_task, seed, max_steps, device)
    horizon = max_steps if max_steps is not None else episode_horizon(venv)
    obs_space, act_space = venv.single_observation_space, venv.single_action_space
    venv.set_tasks(repeat_tasks(tasks, slots))  # type: ignore[attr-defined]
    raw_obs, _ = venv.reset(seed=seed)
    e = episodes_per_task
    slot_task = np.arange(n * slots) // slots
    column = slot_task * e + np.arange(n * slots) % slots   # episode (output column) each slot runs; -1: idle
    started = np.full(n, slots)                              # episodes of each task started so far
    position = np.zeros(n * slots, dtype=np.int64)           # row of the slot's next step within its episode
    resetting = np.zeros(n * slots, dtype=bool)              # this step is the slot's autoreset step
    done = 0
    # Per step, for every slot: (output column, row, recorded?, obs, action, log-prob, reward, terminated,
    # truncated, next obs); _pack keeps the recorded entries (one gather at the end, not one per step).
    records: list[tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor,
                        np.ndarray, np.ndarray, np.ndarray, torch.Tensor]] = []
    obs = encode_obs(raw_obs, obs_space, device)
    while done < n * e:
        with torch.no_grad():
            actions, log_probs = act_fn(obs)
        raw_next, reward, terminated, truncated, _ = venv.step(to_env_actions(actions, act_space))
        next_obs = encode_obs(raw_next, obs_space, device)
        # copies: the records must not change if the env reuses its output buffers
        terminated, truncated = np.array(terminated, dtype=bool), np.array(truncated, dtype=bool)
        live = (column >= 0) & ~resetting
        records.append((column.copy(), position.copy(), live, obs, actions, log_probs,
                        np.array(reward, dtype=np.float32), terminated, truncated, next_obs))
        ended = live & (terminated | truncated)
        position += live
        if position.max() >= horizon and (live & ~ended & (position >= horizon)).any():
            raise RuntimeError(
                f"an episode reached max_steps={horizon} rows without the env ending it (terminated or truncated); "
                "packed collection continues each sub-env through its autoreset, so the env must end its own "
                f"episodes: give the env a time limit of {horizon} steps, or run one sub-env per episode "
                "(envs_per_task = episodes_per_task)")
        ended_slots = np.flatnonzero(ended)
        if ended_slots.size:  # most steps end no episode: skip the bookkeeping
            done += ended_slots.size
            # Hand out each task's next unstarted episodes to its ended slots, in slot order (slots are
            # grouped by task, so a slot's rank among its task's ended slots is its offset in the group).
            k = slot_task[ended_slots]
            nxt = started[k] + np.arange(len(k)) - np.searchsorted(k, k)
            column[ended_slots] = np.where(nxt < e, k * e + nxt, -1)
            np.add.at(started, k, 1)
            np.minimum(started, e, out=started)
            position[ended_slots] = 0
        resetting = ended
        obs = next_obs
    return _pack(records, n * e, e, device)


def _pack(records: list[Any], columns: int, episodes_per_task: int, device: torch.device | str) -> TrajectoryBatch:
    """Scatter the recorded ``(column, row)`` steps of :func:`collect_packed_episodes` into a batch."""
    keep = np.concatenate([r[2] for r in records])
    col = np.concatenate([r[0] for r in records])[keep]
    row = np.concatenate([r[1] for r in records])[keep]
    length = int(row.max()) + 1
    c = torch.as_tensor(col, device=device)
    t = torch.as_tensor(row, device=device)
    kept = torch.as_tensor(keep, device=device)

    def scatter(values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros((length, columns, *values.shape[1:]))
        out[t, c] = values
        return out

    def gathered(i: int) -> torch.Tensor:
        return torch.cat([r[i] for r in records])[kept]

    def host(i: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([r[i] for r in records])[keep], device=device, dtype=dtype)

    return TrajectoryBatch(
        obs=scatter(gathered(3)), actions=scatter(gathered(4)), log_probs=scatter(gathered(5)),
        rewards=scatter(host(6, torch.float32)), terminated=scatter(host(7, torch.bool)),
        truncated=scatter(host(8, torch.bool)), mask=scatter(torch.ones(len(col), device=device)),
        next_obs=scatter(gathered(9)),
        task_index=torch.arange(columns, device=device) // episodes_per_task,
    )


class TaskEnvs:
    """One task family, its spaces and horizon, and cached batched envs (one per batch size).

    ``spec`` is anything :func:`metarl.registry.make_env` accepts: a registered id such as
    ``"metarl/Navigation2D-v0"`` or ``"package.module:Name"`` for a custom family.
    ``episodes_per_env``: how many of a task's episodes :meth:`collect` runs back to back on one
    sub-env (1: one sub-env per episode; more pays off where episodes end early, e.g. CartPole).
    """

    def __init__(self, spec: str, env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None,
                 episodes_per_env: int = 1) -> None:
        from metarl.registry import make_env  # local: registry imports gymnasium ids lazily

        if isinstance(episodes_per_env, bool) or not isinstance(episodes_per_env, (int, np.integer)) \
                or episodes_per_env < 1:
            raise ValueError(f"episodes_per_env must be an int >= 1 (1: one sub-env per episode; more: episodes "
                             f"run back to back on each sub-env), got {episodes_per_env!r}")
        self.episodes_per_env = int(episodes_per_env)
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
                device: torch.device | str = "cpu", envs_per_task: int | None = None) -> TrajectoryBatch:
        """``episodes_per_task`` episodes of every task, packed back to back on ``envs_per_task`` sub-envs
        per task (:func:`collect_packed_episodes`); default ``ceil(episodes_per_task / episodes_per_env)``
        (with ``episodes_per_env = 1``, one sub-env per episode: :func:`collect_episodes`)."""
        slots = -(-episodes_per_task // self.episodes_per_env) if envs_per_task is None else envs_per_task
        if not isinstance(slots, (int, np.integer)) or isinstance(slots, bool) or not 1 <= slots <= episodes_per_task:
            raise ValueError(f"envs_per_task must be an int in [1, episodes_per_task={episodes_per_task}] or None "
                             f"(one sub-env per episode), got {envs_per_task!r}")
        venv = self.vector(len(tasks) * int(slots))
        return collect_packed_episodes(venv, act_fn, tasks, episodes_per_task, seed, self.horizon, device)

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
    from metarl.functional import task_distribution, task_outputs

    # The built-in policies draw (action, log-prob) straight from their outputs (sample_with_log_prob: the law
    # of their distribution's sample/log_prob, without building one per step); others go through their
    # distribution.
    sample = getattr(policy, "sample_with_log_prob", None)

    def act(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if stacked is None:
            if sample is not None:
                return sample(policy(obs))  # type: ignore[no-any-return]
            dist = policy.distribution(obs)  # type: ignore[operator]
            a = dist.sample()
            return a, dist.log_prob(a)
        x = obs.reshape(n_tasks, obs.shape[0] // n_tasks, *obs.shape[1:])
        if sample is not None:
            a, logp = sample(task_outputs(policy, stacked, x))
        else:
            dist = task_distribution(policy, stacked, x)
            a = dist.sample()
            logp = dist.log_prob(a)
        return a.reshape(obs.shape[0], *a.shape[2:]), logp.reshape(obs.shape[0])

    return act
