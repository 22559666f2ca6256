"""Trials: ``n`` episodes of one task, the unit of experience of memory-based meta-learners.

RL² (Duan et al. 2016, sec. 2.2) and MANN-style agents adapt through their memory, not their weights:
a *trial* is ``n`` consecutive episodes of one task; the agent's memory state persists across the
episode boundaries inside a trial and is cleared (re-initialised) only at the start of a trial. At
every step the memory reads (Duan et al. 2016, fig. 1)::

    x_t = [ obs_t,  a_{t-1},  r_{t-1},  d_{t-1} ]

the current observation, the previous action (one-hot for ``Discrete`` actions; for a bounded ``Box``
the action in the policies' normalised units, clipped to ``[-1, 1]``, i.e. what the env executed), the
previous reward (times ``reward_scale``) and the flag ``d_{t-1} = 1`` when the previous step ended an
episode (terminated or truncated), so ``obs_t`` is the first observation of the next episode of the
same trial. At the start of a trial ``a_{-1} = 0``, ``r_{-1} = 0``, ``d_{-1} = 0``.

Layout (:class:`TrialBatch`): column ``b`` is one whole trial, real steps from row 0 (episode after
episode, with no row for the env's autoreset steps) followed by padding. Columns belong to tasks as in
:mod:`metarl.rollout` (column ``b`` to task ``b // trials_per_task``). All trials are stepped together in
one batched env, ``num_envs = n_tasks * trials_per_task``.

Autoresets: the batched envs autoreset NEXT_STEP, so the step after an episode ends only resets that
sub-env (action ignored, reward 0) and returns the first observation of the next episode. Those steps
are not part of the trial: the column's memory is left unchanged on them (``torch.where`` on the
state), nothing is recorded, and the next real step sees the reset observation with ``a, r, d`` of the
episode's last step. Columns whose trial is complete keep stepping masked until every trial is done.

Stored for the update (STYLE.md habit 4): the inputs ``x_t``, actions, log-probabilities and values
of the behaviour policy, and the memory state at the start of every BPTT chunk of ``chunk`` rows
(chunk 0 starts at the trial's first step with the initial, cleared state). Unrolling the memory from
``initial_states[c]`` over rows ``c * chunk ...`` of ``inputs`` recomputes exactly the rollout's
sequence (tested), whether the update runs whole trials (``chunk >= T``) or truncated BPTT.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import gymnasium
import torch
from torch.distributions import Distribution

from metarl.policies import check_spaces, encode_obs, flat_obs_dim, to_env_actions
from metarl.rollout import repeat_tasks
from metarl.types import Task


class MemoryModel(Protocol):
    """What the trial rollout needs from a memory-based actor-critic.

    ``initial_state(b)``: the cleared memory ``[b, S]``. ``step(x [B, D_in], state [B, S], time [B])`` returns
    the action distribution (batch shape ``[B]``), the values ``[B]`` and the next state ``[B, S]``; ``time``
    is each trial's step index (a value function may read it, see :class:`metarl.recurrent.RecurrentActorCritic`).
    """

    def initial_state(self, batch: int) -> torch.Tensor: ...

    def step(self, inputs: torch.Tensor, state: torch.Tensor,
             time: torch.Tensor) -> tuple[Distribution, torch.Tensor, torch.Tensor]: ...


def action_input_dim(space: gymnasium.Space) -> int:
    """Width of the previous-action part of the memory input: ``n`` for ``Discrete(n)``, ``d`` for ``Box(d)``."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.n)
    return int(space.shape[0]) if space.shape else 1


def memory_input_dim(observation_space: gymnasium.Space, action_space: gymnasium.Space) -> int:
    """``D_in = obs + previous action + previous reward + done flag``."""
    check_spaces(observation_space, action_space)
    return flat_obs_dim(observation_space) + action_input_dim(action_space) + 2


def encode_action(actions: torch.Tensor, space: gymnasium.Space) -> torch.Tensor:
    """Policy outputs ``[B]`` (Discrete) or ``[B, d]`` (Box) -> the action part of the input ``[B, A_in]``.

    Discrete: one-hot. Bounded Box: clipped to ``[-1, 1]`` (the normalised units that
    :func:`metarl.policies.to_env_actions` maps onto the bounds, so the memory sees what the env did).
    Unbounded Box: unchanged.
    """
    if isinstance(space, gymnasium.spaces.Discrete):
        return torch.nn.functional.one_hot(actions.long(), int(space.n)).float()
    a = actions.float().reshape(actions.shape[0], -1)
    if isinstance(space, gymnasium.spaces.Box) and space.is_bounded("both"):
        a = a.clamp(-1.0, 1.0)
    return a


def memory_inputs(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                  prev_done: torch.Tensor) -> torch.Tensor:
    """``x_t = [obs_t, a_{t-1}, r_{t-1}, d_{t-1}]``: ``[B, D]``, ``[B, A_in]``, ``[B]``, ``[B]`` -> ``[B, D_in]``."""
    return torch.cat([obs, prev_action, prev_reward[:, None], prev_done[:, None].float()], dim=-1)


@dataclass(frozen=True)
class TrialBatch:
    """Trials, time-major: ``T`` rows (the longest trial's real steps), ``B`` columns (trials).

    Fields:
        inputs: ``[T, B, D_in]`` memory inputs ``x_t`` (see the module docstring).
        actions: ``[T, B]`` long (Discrete) or ``[T, B, A]`` float (Box, normalised units).
        log_probs: ``[T, B]`` behaviour log-probabilities; values: ``[T, B]`` behaviour values.
        rewards: ``[T, B]``, 0 on padding.
        mask: ``[T, B]`` float, 1 on real steps.
        episode: ``[T, B]`` long, index of the step's episode within its trial (0 on padding).
        episode_end: ``[T, B]`` bool, the env's episode ended at this step (terminated or truncated).
        terminated: ``[T, B]`` bool, the env reached a terminal state at this step.
        initial_states: ``[C, B, S]`` memory state before row ``c * chunk`` (``C = ceil(T / chunk)``).
        final_states: ``[B, S]`` memory state after the trial's last step.
        last_action: ``[B, A_in]`` encoded last action of each trial (to continue a trial).
        task_index: ``[B]`` long.
        task_features: ``[B, F]`` each trial's task parameters (:meth:`metarl.types.Task.features`) when the
            rollout was asked for them (a task-informed value head reads them), else ``[B, 0]``.
        n_episodes: episodes per trial; chunk: rows per BPTT chunk.
        complete: ``[B]`` bool, the trial ran all its episodes (False only if the rollout hit its
            step cap because an env never ended an episode).
    """

    inputs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    episode: torch.Tensor
    episode_end: torch.Tensor
    terminated: torch.Tensor
    initial_states: torch.Tensor
    final_states: torch.Tensor
    last_action: torch.Tensor
    task_index: torch.Tensor
    task_features: torch.Tensor
    n_episodes: int
    chunk: int
    complete: torch.Tensor

    @property
    def trial_end(self) -> torch.Tensor:
        """``[T, B]`` bool: the last real step of each trial."""
        real = self.mask > 0
        nxt = torch.cat([real[1:], torch.zeros_like(real[:1])])
        return real & ~nxt

    @property
    def episode_returns(self) -> torch.Tensor:
        """``[B, n_episodes]`` undiscounted return of every episode of every trial."""
        out = torch.zeros(self.rewards.shape[1], self.n_episodes, dtype=self.rewards.dtype,
                          device=self.rewards.device)
        return out.scatter_add_(1, self.episode.T, (self.rewards * self.mask).T)

    @property
    def trial_returns(self) -> torch.Tensor:
        """``[B]`` total reward of each trial."""
        return (self.rewards * self.mask).sum(0)

    @property
    def num_steps(self) -> int:
        return int(self.mask.sum().item())

    def select(self, columns: torch.Tensor | slice) -> TrialBatch:
        """The sub-batch of the given trial columns."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("n_episodes", "chunk"):
                out[f.name] = v
            elif f.name in ("final_states", "last_action", "task_index", "task_features", "complete"):
                out[f.name] = v[columns]
            else:
                out[f.name] = v[:, columns]
        return TrialBatch(**out)


def _scatter(values: torch.Tensor, real: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
    """``values [R_raw, B, ...]`` at the real raw steps -> ``[length, B, ...]`` with each column's real
    steps moved to rows ``0, 1, ...`` in order (``pos``: the destination row of every raw step)."""
    b = values.shape[1]
    out = values.new_zeros((length, b, *values.shape[2:]))
    raw_t, col = real.nonzero(as_tuple=True)
    out[pos[raw_t, col], col] = values[raw_t, col]
    return out


def _task_features(tasks: Sequence[Task], device: torch.device | str) -> torch.Tensor:
    """``[B, F]``: every task's :meth:`~metarl.types.Task.features`, which must have one length."""
    rows = [task.features() for task in tasks]
    widths = sorted({len(r) for r in rows})
    if len(widths) > 1:
        raise ValueError(f"the tasks' features() have different lengths {widths}; a task-informed value head needs "
                         "one length for every task of the family (pad or override Task.features())")
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(tasks), widths[0] if widths else 0)


def greedy_actions(dist: Distribution) -> torch.Tensor:
    """The most likely action of each row, ``dist.mode``: the argmax of a categorical, the mean of a Gaussian.

    A custom memory model's distribution must define ``mode`` for greedy evaluation."""
    try:
        return dist.mode
    except NotImplementedError:
        raise TypeError(f"greedy evaluation takes the policy distribution's most likely action, but "
                        f"{type(dist).__name__} does not define `mode`; implement it, or evaluate with "
                        "greedy=False") from None


def collect_trials(venv: gymnasium.vector.VectorEnv, model: MemoryModel, tasks: Sequence[Task],
                   trials_per_task: int, n_episodes: int, seed: int, horizon: int, chunk: int = 0,
                   reward_scale: float = 1.0, device: torch.device | str = "cpu", greedy: bool = False,
                   task_features: bool = False) -> TrialBatch:
    """Run one trial of ``n_episodes`` episodes in every column, all columns in one batched env.

    ``venv.num_envs`` must equal ``len(tasks) * trials_per_task``. The env is reset with ``seed``
    (sub-env ``i`` gets ``seed + i``) after its tasks are set. ``horizon`` is the env's episode
    length: the rollout stops at ``n_episodes * (horizon + 1)`` env steps at the latest (the ``+ 1``:
    autoreset steps), cutting (with a warning) any trial an env never ended. ``chunk``: rows per BPTT
    chunk whose initial states are stored (0: the whole trial is one chunk). ``greedy``: take the most
    likely action (Gaussian: the mean) instead of sampling, for evaluation; ``log_probs`` are still the
    policy's log-probabilities of the actions taken. ``task_features``: pass each column's task parameters
    ``[B, F]`` to ``model.step(..., task=...)`` (a task-informed value head) and store them in the batch.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1 episode per trial, got {n_episodes}")
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0 (0: whole trials), got {chunk}")
    columns = repeat_tasks(tasks, trials_per_task)
    b = len(columns)
    if venv.num_envs != b:
        raise ValueError(f"the vector env has {venv.num_envs} sub-envs but {len(tasks)} tasks x {trials_per_task} "
                         f"trials = {b} columns are needed; build it with num_envs={b}")
    obs_space, act_space = venv.single_observation_space, venv.single_action_space
    max_raw = n_episodes * (horizon + 1)
    step_chunk = chunk if chunk > 0 else max_raw
    feats = _task_features(columns, device) if task_features else torch.zeros(b, 0, device=device)
    task_kw = {"task": feats} if task_features else {}
    venv.set_tasks(columns)  # type: ignore[attr-defined]
    raw_obs, _ = venv.reset(seed=seed)
    state = model.initial_state(b)
    n_chunks_max = math.ceil(max_raw / step_chunk)
    initial_states = state.new_zeros((n_chunks_max, *state.shape))
    prev_action = torch.zeros(b, action_input_dim(act_space), device=device)
    prev_reward = torch.zeros(b, device=device)
    prev_done = torch.zeros(b, dtype=torch.bool, device=device)
    episodes_done = torch.zeros(b, dtype=torch.long, device=device)
    resetting = torch.zeros(b, dtype=torch.bool, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    pos = torch.zeros(b, dtype=torch.long, device=device)  # each column's next compacted row
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("inputs", "actions", "log_probs", "values", "rewards",
                                                         "real", "episode", "ended", "terminated", "pos")}
    zero_action = (torch.zeros(b, dtype=torch.long, device=device) if isinstance(act_space, gymnasium.spaces.Discrete)
                   else torch.zeros(b, action_input_dim(act_space), device=device))
    for _ in range(max_raw):
        real = ~resetting & ~finished
        x = memory_inputs(encode_obs(raw_obs, obs_space, device), prev_action, prev_reward * reward_scale, prev_done)
        if bool(real.any()):
            starts = real & (pos % step_chunk == 0)
            if bool(starts.any()):
                idx = starts.nonzero(as_tuple=True)[0]
                initial_states[pos[idx] // step_chunk, idx] = state[idx]
            with torch.no_grad():
                dist, values, new_state = model.step(x, state, pos, **task_kw)
                actions = greedy_actions(dist) if greedy else dist.sample()
                log_probs = dist.log_prob(actions)
            # (A copy of the whole state only when some column is resetting: large states, e.g. an attention
            # core's key/value cache, make it the rollout's largest cost.)
            state = new_state if bool(real.all()) else torch.where(real[:, None], new_state, state)
        else:  # every column is autoresetting: the env ignores the actions
            actions, log_probs, values = zero_action, torch.zeros(b, device=device), torch.zeros(b, device=device)
        raw_next, reward, terminated, truncated, _ = venv.step(to_env_actions(actions, act_space))
        term = torch.as_tensor(terminated, device=device) & real
        ended = (term | torch.as_tensor(truncated, device=device)) & real
        r = torch.as_tensor(reward, dtype=torch.float32, device=device) * real
        for k, v in (("inputs", x), ("actions", actions), ("log_probs", log_probs), ("values", values),
                     ("rewards", r), ("real", real), ("episode", episodes_done.clone()), ("ended", ended),
                     ("terminated", term), ("pos", pos.clone())):
            rec[k].append(v)
        prev_action = torch.where(real[:, None], encode_action(actions, act_space), prev_action)
        prev_reward = torch.where(real, r, prev_reward)
        prev_done = torch.where(real, ended, prev_done)
        pos = pos + real.long()
        episodes_done = episodes_done + ended.long()
        finished = finished | (episodes_done >= n_episodes)
        resetting = ended & ~finished
        raw_obs = raw_next
        if bool(finished.all()):
            break
    if not bool(finished.all()):
        warnings.warn(f"{int((~finished).sum())} of {b} trials did not finish {n_episodes} episodes within "
                      f"{max_raw} env steps (the env never ended an episode within its horizon {horizon}); "
                      "they are cut there and treated as ended", stacklevel=2)
    length = int(pos.max().item())
    real_all = torch.stack(rec["real"])
    pos_all = torch.stack(rec["pos"])
    out = {k: _scatter(torch.stack(rec[k]), real_all, pos_all, length)
           for k in ("inputs", "actions", "log_probs", "values", "rewards", "episode", "ended", "terminated")}
    mask = _scatter(real_all.float(), real_all, pos_all, length)
    n_chunks = math.ceil(length / step_chunk)
    return TrialBatch(
        inputs=out["inputs"], actions=out["actions"], log_probs=out["log_probs"], values=out["values"],
        rewards=out["rewards"], mask=mask, episode=out["episode"], episode_end=out["ended"],
        terminated=out["terminated"], initial_states=initial_states[:n_chunks].clone(), final_states=state,
        last_action=prev_action, task_index=torch.arange(b, device=device) // trials_per_task, task_features=feats,
        n_episodes=n_episodes, chunk=step_chunk if chunk > 0 else max(length, 1), complete=finished.clone(),
    )


__all__ = ["MemoryModel", "TrialBatch", "action_input_dim", "collect_trials", "encode_action", "memory_input_dim",
           "memory_inputs"]
