"""Random tabular MDPs: the RL^2 tabular task family (id ``metarl/TabularMDP-v0``).

Definition (Duan et al., 2016, "RL^2: Fast Reinforcement Learning via Slow Reinforcement Learning",
Sec. 4.2 and Table 2):

- Task: an MDP with ``|S| = 10`` states and ``|A| = 5`` actions. Mean rewards ``mu[s, a] ~ N(1, 1)``
  and transition distributions ``P[s, a, :] ~ Dirichlet(1, ..., 1)`` (flat), all independent.
- Episode: starts in state 0; ``T = 10`` steps, then ``truncated=True`` (never ``terminated``).
  An RL^2 *trial* is ``n`` episodes of the same MDP (the agent's memory persists across them);
  the trial is the rollout code's business, this env is one episode.
- Reward of a step in ``s`` with action ``a``: ``r ~ N(mu[s, a], 1)``; the next state ``s' ~ P[s, a, :]``.
- Observation: the current state as a one-hot float32 vector, ``Box(0, 1, (|S|,))``. (The paper feeds
  its recurrent policy the state together with the previous action, reward and termination flag;
  those come from the RL^2 trial wrapper. One-hot rather than ``Discrete(|S|)`` keeps every built-in
  family a flat Box env, which MLP/GRU policies and the SB3 checker take as is.)
- Actions: ``Discrete(|A|)``.

Choices, and what we do:

- **Random draws.** All in-episode randomness comes from the counter RNG (``metarl.rng``), three
  draws per step in this order: ``u1, u2`` (counters ``c, c + 1``) give the reward noise by the
  Box-Muller transform, ``z = sqrt(-2 ln(1 - u1)) cos(2 pi u2)`` (``1 - u1`` lies in (0, 1], so the
  log is finite); ``u3`` (counter ``c + 2``) gives the next state by inverse CDF: ``s'`` is the number of
  entries of the cumulative row ``cumsum(P[s, a, :])`` that are ``<= u3``. The cumulative entries from
  the row's last positive-probability state on are set to ``+inf``, so float rounding can never
  select a state of probability 0. The batched twin uses the same draws, vectorised.
- **Counters continue across episodes** when ``reset`` is called without a seed (as within a trial),
  so the episodes of a trial see fresh noise.
- **Splits.** ``train``/``test`` are the standard 80/20 hash split of the prior
  (:func:`metarl.tasks.task_split`). There is no ``ood`` split: the paper defines none;
  ``split="ood"`` raises the standard ``ValueError``.
- **Default task** (``task=None``): the first train task of ``sample_tasks(1, default_rng(0))`` for the
  given sizes. Task sampling uses only the ``numpy.random.Generator`` passed to ``sample_tasks``.
- Reference returns (RL^2 Table 2, paper numbers): a uniformly random policy earns about 1 per step
  (100.1 over 10 episodes of 10 steps); RL^2 156.2 over 10 episodes.

Version semantics: ``-v0``. Any change to the draws, the priors, the observation encoding, the default
sizes/horizon or the split assignment bumps the version to ``-v1``.

Example::

    >>> task = TabularMDPTask(rewards=((0.5, 2.0), (1.0, -1.0)),
    ...                       transitions=(((0.0, 1.0), (1.0, 0.0)), ((1.0, 0.0), (0.0, 1.0))))
    >>> env = TabularMDPEnv(n_states=2, n_actions=2, horizon=3, task=task)
    >>> obs, info = env.reset(seed=0)
    >>> obs.tolist(), env.step(0)[0].tolist()  # action 0 in state 0 moves to state 1 with probability 1
    ([1.0, 0.0], [0.0, 1.0])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from metarl.lockstep import LockstepClock
from metarl.rng import batch_seeds, reset_stream, uniform
from metarl.tasks import sample_split
from metarl.types import Task

__all__ = ["TabularMDPTask", "TabularMDPEnv", "TabularMDPVectorEnv", "transition", "step_draws", "step_noise",
           "inverse_cdf_table", "gaussian_noise", "sample_next_state"]

DEFAULT_N_STATES = 10
DEFAULT_N_ACTIONS = 5
DEFAULT_HORIZON = 10
REWARD_MEAN, REWARD_MEAN_STD, REWARD_NOISE_STD = 1.0, 1.0, 1.0
"""mu ~ N(REWARD_MEAN, REWARD_MEAN_STD^2); r ~ N(mu, REWARD_NOISE_STD^2) (RL^2 Sec. 4.2)."""
DRAWS_PER_STEP = 3
"""Counter draws per step: two for the Box-Muller reward noise, one for the next state."""
ROW_SUM_TOLERANCE = 1e-6
"""How far a transition row of a user-made task may sum from 1."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _nested_floats(value: Any, name: str) -> tuple[Any, ...]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a rectangular nested sequence of floats, got {value!r:.200}") from None
    return array.tolist()  # type: ignore[no-any-return]


def _to_tuples(x: list[Any]) -> tuple[Any, ...]:
    """Nested lists from ``ndarray.tolist()`` (Python float leaves) -> nested tuples. Runs once per task
    drawn (and train/test rejection draws ~5 per test task), so no per-leaf Python call."""
    return tuple(map(_to_tuples, x)) if x and isinstance(x[0], list) else tuple(x)


@dataclass(frozen=True)
class TabularMDPTask(Task):
    """A random tabular MDP.

    Fields:
        rewards: ``(S, A)`` nested tuples, the mean reward ``mu[s][a]`` of action ``a`` in state ``s``.
        transitions: ``(S, A, S)`` nested tuples, ``P[s][a][s']``; each row ``P[s][a]`` sums to 1.
    """

    family: ClassVar[str] = "tabular_mdp"

    rewards: tuple[tuple[float, ...], ...]
    transitions: tuple[tuple[tuple[float, ...], ...], ...]

    def __post_init__(self) -> None:
        mu = np.asarray(_nested_floats(self.rewards, "rewards"), dtype=np.float64)
        p = np.asarray(_nested_floats(self.transitions, "transitions"), dtype=np.float64)
        if mu.ndim != 2 or mu.size == 0:
            raise ValueError(f"rewards must be an (S, A) nested tuple with S, A >= 1, got shape {mu.shape}")
        s, a = mu.shape
        if p.shape != (s, a, s):
            raise ValueError(f"transitions must have shape (S, A, S) = ({s}, {a}, {s}) to match rewards (S, A) = "
                             f"({s}, {a}), got shape {p.shape}")
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"rewards must be finite, got {mu[~np.isfinite(mu)][:3].tolist()}")
        if not np.all(np.isfinite(p)) or (p < 0).any():
            raise ValueError("transitions must be finite probabilities >= 0, got "
                             f"{p[~(np.isfinite(p) & (p >= 0))][:3].tolist()}")
        sums = p.sum(axis=2)
        bad = np.argwhere(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"each transition row P[s][a] must sum to 1 (within {ROW_SUM_TOLERANCE}), got "
                             f"P[{i}][{j}] summing to {float(sums[i, j])!r}; normalise the rows")
        # Plain nested float tuples keep the task hashable and JSON-able whatever the caller passed.
        object.__setattr__(self, "rewards", _to_tuples(mu.tolist()))
        object.__setattr__(self, "transitions", _to_tuples(p.tolist()))

    @property
    def n_states(self) -> int:
        return len(self.rewards)

    @property
    def n_actions(self) -> int:
        return len(self.rewards[0])

    def arrays(self) -> tuple[FloatArray, FloatArray]:
        """``(mu [S, A], P [S, A, S])`` as float64 arrays."""
        return np.array(self.rewards, dtype=np.float64), np.array(self.transitions, dtype=np.float64)


def _prior(n_states: int, n_actions: int) -> Any:
    def prior(rng: np.random.Generator) -> TabularMDPTask:
        mu = rng.normal(REWARD_MEAN, REWARD_MEAN_STD, size=(n_states, n_actions))
        p = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
        return TabularMDPTask(rewards=_to_tuples(mu.tolist()), transitions=_to_tuples(p.tolist()))

    return prior


def _sample_tasks(n: int, rng: np.random.Generator, split: str, n_states: int, n_actions: int) -> list[TabularMDPTask]:
    return sample_split(_prior(n_states, n_actions), n, rng, split)


def _default_task(n_states: int, n_actions: int) -> TabularMDPTask:
    return _sample_tasks(1, np.random.default_rng(0), "train", n_states, n_actions)[0]


def inverse_cdf_table(p: FloatArray) -> FloatArray:
    """The cumulative rows used to sample next states by inverse CDF.

    Args:
        p: ``[..., S]`` probability rows.

    Returns:
        ``[..., S]`` ``cumsum(p)`` with every entry from the row's last positive-probability state on set
        to ``+inf`` (so rounding in the cumulative sum can never select a state of probability 0).
    """
    cdf = np.cumsum(p, axis=-1)
    n = p.shape[-1]
    positive = p > 0
    last = n - 1 - np.argmax(positive[..., ::-1], axis=-1)  # index of the last positive entry of each row
    cdf[np.arange(n) >= last[..., None]] = np.inf
    return cdf


def gaussian_noise(u1: FloatArray, u2: FloatArray) -> FloatArray:
    """Standard normal samples from two uniforms in [0, 1) by the Box-Muller transform (elementwise)."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)


def sample_next_state(cdf_rows: FloatArray, u: FloatArray) -> IntArray:
    """Next states by inverse CDF: for each row, the number of cumulative entries ``<= u``.

    Args:
        cdf_rows: ``[B, S]`` rows of :func:`inverse_cdf_table`.
        u: ``[B]`` uniforms in [0, 1).

    Returns:
        ``[B]`` int64 states.
    """
    return np.add.reduce(cdf_rows <= u[:, None], axis=1, dtype=np.int64)  # type: ignore[no-any-return]


_DRAW_OFFSETS = np.arange(DRAWS_PER_STEP, dtype=np.uint64)


def step_draws(key: Any, counter: Any) -> FloatArray:
    """``[B, 3]`` uniforms of a step: counters ``c, c + 1, c + 2`` of each row's key (one call for all)."""
    k = np.asarray(key, dtype=np.uint64)
    return uniform(k[..., None] if k.ndim else k, np.asarray(counter, dtype=np.uint64)[:, None] + _DRAW_OFFSETS)


def step_noise(u: FloatArray) -> FloatArray:
    """``[..., 2]``: standard normal reward noise (Box-Muller of ``u[..., 0:2]``) and the next-state uniform
    ``u[..., 2]``, from ``[..., 3]`` step uniforms (elementwise over the leading axes)."""
    return np.stack([gaussian_noise(u[..., 0], u[..., 1]), u[..., 2]], axis=-1)


def transition(mu_sa: FloatArray, cdf_rows: FloatArray, noise: FloatArray) -> tuple[FloatArray, IntArray]:
    """One tabular-MDP step for a batch, shared by the single env and the batched twin.

    Args:
        mu_sa: ``[B]`` mean rewards of the chosen (state, action) pairs.
        cdf_rows: ``[B, S]`` inverse-CDF rows of the chosen (state, action) pairs.
        noise: ``[B, 2]`` the step's :func:`step_noise`: a standard normal, then the next-state uniform.

    Returns:
        ``(reward [B] float64, next_state [B] int64)``.
    """
    reward = mu_sa + REWARD_NOISE_STD * noise[:, 0]
    return reward, sample_next_state(cdf_rows, noise[:, 1])


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_render_mode(render_mode: Any) -> None:
    if render_mode is not None:
        raise ValueError(f"render_mode must be None (TabularMDP has no renderer), got {render_mode!r}")


def _check_task(task: Any, n_states: int, n_actions: int) -> TabularMDPTask:
    if not isinstance(task, TabularMDPTask):
        raise TypeError(f"task must be a TabularMDPTask, got {type(task).__name__}")
    if (task.n_states, task.n_actions) != (n_states, n_actions):
        raise ValueError(f"task has {task.n_states} states and {task.n_actions} actions but the env has "
                         f"n_states={n_states}, n_actions={n_actions}; build the env with the task's sizes")
    return task


def _spaces(n_states: int, n_actions: int) -> tuple[spaces.Box, spaces.Discrete]:
    return spaces.Box(0.0, 1.0, shape=(n_states,), dtype=np.float32), spaces.Discrete(n_actions)


class TabularMDPEnv(gymnasium.Env[npt.NDArray[Any], np.int64]):
    """One random tabular MDP, one episode of ``horizon`` steps from state 0 (see the module docstring).

    Args:
        n_states: ``|S|`` (>= 1), default 10.
        n_actions: ``|A|`` (>= 1), default 5.
        horizon: episode length ``T`` (>= 1), default 10; ``truncated=True`` on the T-th step.
        task: the MDP; ``None`` gives the first train task of ``sample_tasks(1, default_rng(0))``.
        render_mode: must be ``None``.

    ``info["state"]`` is the (integer) state after the step.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, n_states: int = DEFAULT_N_STATES, n_actions: int = DEFAULT_N_ACTIONS,
                 horizon: int = DEFAULT_HORIZON, task: TabularMDPTask | None = None,
                 render_mode: str | None = None) -> None:
        self.n_states = _check_int("n_states", n_states, 1)
        self.n_actions = _check_int("n_actions", n_actions, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.observation_space, self.action_space = _spaces(self.n_states, self.n_actions)
        self.set_task(_default_task(self.n_states, self.n_actions) if task is None else task)
        self._state = 0
        self._t = 0
        self._started = False
        self._done = False
        self._key: np.ndarray | None = None
        self._counter = 0

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[TabularMDPTask]:
        """``n`` MDPs of ``split`` ("train" or "test"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split, self.n_states, self.n_actions)

    def set_task(self, task: TabularMDPTask) -> None:
        """Set the MDP; takes effect on the next step (the current state is kept until ``reset``)."""
        self._task = _check_task(task, self.n_states, self.n_actions)
        mu, p = task.arrays()
        self._mu = mu
        self._cdf = inverse_cdf_table(p)

    def get_task(self) -> TabularMDPTask:
        return self._task

    # --- gymnasium API ----------------------------------------------------------------------------
    def _obs(self) -> npt.NDArray[np.float32]:
        obs = np.zeros(self.n_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Start an episode in state 0; ``options={"task": t}`` sets the MDP first."""
        super().reset(seed=seed)
        self._key, self._counter = reset_stream(seed, self._key, self._counter, self.np_random)
        if options is not None and "task" in options:
            self.set_task(options["task"])
        self._state = 0
        self._t = 0
        self._started = True
        self._done = False
        return self._obs(), {"state": 0}

    def step(self, action: Any) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Take ``action`` in the current state: reward ~ N(mu[s, a], 1), s' ~ P[s, a, :]."""
        if not self._started:
            raise RuntimeError("TabularMDPEnv.step() called before reset(); call env.reset() first")
        a = np.asarray(action)
        if a.shape not in ((), (1,)) or not np.issubdtype(a.dtype, np.integer) or not 0 <= int(a) < self.n_actions:
            raise ValueError(f"action must be an int in [0, {self.n_actions}), got {action!r}")
        if self._done:
            warnings.warn("TabularMDPEnv.step() called after the episode ended; call reset()", stacklevel=2)
        s, act = self._state, int(a)
        # Batch of one through the shared function, so the single env and the twin compute identically.
        noise = step_noise(step_draws(self._key, np.array([self._counter], dtype=np.uint64)))
        reward, next_state = transition(self._mu[s, act:act + 1], self._cdf[s, act][None], noise)
        self._counter += DRAWS_PER_STEP
        self._state = int(next_state[0])
        self._t += 1
        truncated = self._t >= self.horizon
        self._done = truncated
        return self._obs(), float(reward[0]), False, truncated, {"state": self._state}

    def render(self) -> None:
        return None


class TabularMDPVectorEnv(gymnasium.vector.VectorEnv[npt.NDArray[np.float32], npt.NDArray[np.int64],
                                                      npt.NDArray[Any]]):
    """``num_envs`` random tabular MDPs with per-env tasks, stepped with NumPy over the batch.

    Identical transitions to ``gymnasium.vector.SyncVectorEnv`` of :class:`TabularMDPEnv` (NEXT_STEP
    autoreset: the step after an episode ends resets that sub-env to state 0, ignores its action, spends
    no counter draws and returns the reset observation with reward 0 and both flags ``False``).
    Sub-envs keep their task, and their counter, across autoresets. The draws of the coming steps (and their
    Box-Muller transform) are computed a block at a time (:class:`metarl.rng.UniformBlocks`): the
    same numbers, a fraction of the per-step overhead.

    Args:
        num_envs: number of sub-envs (>= 1).
        n_states, n_actions, horizon, render_mode: as :class:`TabularMDPEnv`.
        task: one MDP for every sub-env; tasks: one per sub-env (length ``num_envs``); not both.

    Shapes: observations ``[num_envs, S]`` one-hot float32, actions ``[num_envs]`` ints, rewards
    ``[num_envs]`` float64, flags ``[num_envs]`` bool; ``info["state"]`` ``[num_envs]`` int64.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, n_states: int = DEFAULT_N_STATES, n_actions: int = DEFAULT_N_ACTIONS,
                 horizon: int = DEFAULT_HORIZON, task: TabularMDPTask | None = None,
                 tasks: Sequence[TabularMDPTask] | None = None, render_mode: str | None = None) -> None:
        self.num_envs = _check_int("num_envs", num_envs, 1)
        self.n_states = _check_int("n_states", n_states, 1)
        self.n_actions = _check_int("n_actions", n_actions, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = _spaces(self.n_states, self.n_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        if task is not None and tasks is not None:
            raise ValueError("pass either task (the same for every sub-env) or tasks (one per sub-env), not both")
        if tasks is None:
            tasks = [_default_task(self.n_states, self.n_actions) if task is None else task] * self.num_envs
        self._rows = np.arange(self.num_envs)
        self._pair_offsets = self._rows * (self.n_states * self.n_actions)
        self._eye = np.eye(self.n_states, dtype=np.float32)
        self.set_tasks(tasks)
        self._state = np.zeros(self.num_envs, dtype=np.int64)
        self._clock = LockstepClock(self.num_envs, self.horizon, DRAWS_PER_STEP, transform=step_noise,
                                    name="TabularMDPVectorEnv")

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[TabularMDPTask]:
        """``n`` MDPs of ``split`` ("train" or "test"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split, self.n_states, self.n_actions)

    def set_tasks(self, tasks: Sequence[TabularMDPTask]) -> None:
        """One MDP per sub-env; takes effect on the next step (states are kept until the next reset)."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"tasks must have one task per sub-env (num_envs={self.num_envs}), got {len(tasks)}")
        checked = [_check_task(t, self.n_states, self.n_actions) for t in tasks]
        # Tasks repeat often (one per trial, many envs per task): convert each distinct task once.
        cache: dict[TabularMDPTask, tuple[FloatArray, FloatArray]] = {}
        for t in checked:
            if t not in cache:
                mu, p = t.arrays()
                cache[t] = (mu, inverse_cdf_table(p))
        self._tasks = checked
        self._mu = np.stack([cache[t][0] for t in checked])  # [N, S, A]
        self._cdf = np.stack([cache[t][1] for t in checked])  # [N, S, A, S]
        self._flat_mu = self._mu.reshape(-1)  # [N * S * A]
        self._flat_cdf = self._cdf.reshape(-1, self.n_states)  # [N * S * A, S]

    def get_tasks(self) -> list[TabularMDPTask]:
        return list(self._tasks)

    # --- gymnasium API ----------------------------------------------------------------------------
    def _obs(self) -> npt.NDArray[np.float32]:
        return self._eye.take(self._state, axis=0)  # one-hot rows, a fresh [N, S] array

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Reset every sub-env to state 0; int ``seed`` s gives sub-env i seed s + i (as SyncVectorEnv).

        A list of seeds (``None`` entries keep that sub-env's stream) works too;
        ``options={"tasks": [...]}`` sets the MDPs first.
        """
        seeds = batch_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0])
        self._clock.reset(seeds, self.np_random)
        if options is not None and "tasks" in options:
            self.set_tasks(options["tasks"])
        self._state = np.zeros(self.num_envs, dtype=np.int64)
        return self._obs(), {"state": self._state.copy()}

    def step(self, actions: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], FloatArray, npt.NDArray[np.bool_],
                                                     npt.NDArray[np.bool_], dict[str, Any]]:
        """Step every sub-env (resetting those whose episode ended on the previous step)."""
        clock = self._clock
        a = clock.begin(actions, self.n_actions, "ints")
        if a is None:  # every episode ended on the previous step: every sub-env just resets to state 0
            self._state = np.zeros(self.num_envs, dtype=np.int64)
            flags = np.zeros(self.num_envs, dtype=np.bool_)
            return self._obs(), np.zeros(self.num_envs), flags, flags.copy(), {"state": self._state.copy()}
        pair = self._pair_offsets + self._state * self.n_actions + a  # flat (env, state, action) index
        noise = clock.noise(lambda keys, counters: step_noise(step_draws(keys, counters)))
        reward, next_state = transition(self._flat_mu.take(pair), self._flat_cdf.take(pair, axis=0), noise)
        if clock.live is not None:
            next_state[clock.resetting] = 0
        terminated, truncated = clock.end(reward)
        self._state = next_state
        return self._obs(), reward, terminated, truncated, {"state": next_state.copy()}
