"""Bernoulli multi-armed bandits: the RL^2 bandit task family (id ``metarl/Bandit-v0``).

Definition (Duan et al., 2016, "RL^2: Fast Reinforcement Learning via Slow Reinforcement Learning",
Sec. 4.1 and Table 1):

- Task: ``k`` arm success probabilities ``p_1, ..., p_k``, each drawn independently from U[0, 1].
- Action: the arm to pull, ``Discrete(k)``.
- Reward: 1 with probability ``p_a``, else 0 (Bernoulli), one pull per step.
- One *trial* = ``n`` pulls of the same bandit. Here one Gymnasium episode is one trial:
  ``truncated=True`` on the ``n``-th pull (``n_pulls``), never ``terminated``.
- Observation: a constant ``[0.0]`` (float32, ``Box(0, 1, (1,))``). A bandit has no state; an RL^2 or
  MANN agent learns from its previous action and reward, which its trial wrapper (the rollout code)
  feeds it, not this observation. The constant keeps the env a plain Box-observation Gymnasium env
  that every library (and both env checkers) accepts.

Choices, and what we do:

- **Reward draws.** The reward of the ``t``-th pull (``t = 0, 1, ...`` counting from the last
  ``reset(seed=...)``, across trials if the env is reset without a seed) is ``u < p_a`` with
  ``u = metarl.rng.uniform(key, t)``: one counter draw per pull, whichever arm is pulled. The batched
  twin and the classical strategies of :mod:`metarl.bandits` use the same convention, so a strategy
  played through this env, through :class:`BanditVectorEnv` or by :func:`metarl.bandits.play` gets the
  same rewards (common random numbers across arms and strategies, which also narrows the confidence
  interval of strategy differences).
- **info.** ``info["expected_reward"]`` is ``p_a`` of the arm just pulled and ``info["best_prob"]`` is
  ``max_i p_i``, so the (pseudo-)regret of a trial is ``n * best_prob - sum(expected_reward)`` without
  looking at the task. The batched twin reports the same keys as ``[num_envs]`` arrays (0 on the
  autoreset step), without SyncVectorEnv's ``_key`` masks.
- **Splits.** ``train``/``test`` are the standard 80/20 hash split of the U[0, 1]^k prior
  (:func:`metarl.tasks.task_split`). There is no ``ood`` split: the paper defines none and U[0, 1]^k
  already covers every Bernoulli bandit; ``split="ood"`` raises the standard ``ValueError``.
- **Default task** (``task=None``): the first train task of ``sample_tasks(1, default_rng(0))`` for the
  given ``n_arms``.

Version semantics: ``-v0``. Any change to the reward draw convention, the prior, the observation,
the default ``n_arms``/``n_pulls`` or the split assignment bumps the version to ``-v1``.

Example::

    >>> env = BanditEnv(n_arms=2, n_pulls=3, task=BanditTask(probs=(0.0, 1.0)))
    >>> obs, info = env.reset(seed=0)
    >>> [env.step(1)[1:4] for _ in range(3)]  # (reward, terminated, truncated): arm 1 always pays
    [(1.0, False, False), (1.0, False, False), (1.0, False, True)]
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

__all__ = ["BanditTask", "BanditEnv", "BanditVectorEnv", "bernoulli_reward"]

DEFAULT_N_ARMS = 5
DEFAULT_N_PULLS = 100

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BanditTask(Task):
    """A Bernoulli bandit: the success probability of each arm, ``probs[i]`` in [0, 1]."""

    family: ClassVar[str] = "bandit"

    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            values = tuple(float(p) for p in self.probs)
        except (TypeError, ValueError):
            raise ValueError(f"probs must be a sequence of floats in [0, 1], got {self.probs!r}") from None
        if len(values) < 2:
            raise ValueError(f"probs must have at least 2 arms, got {len(values)}: {self.probs!r}")
        bad = [p for p in values if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
        if bad:
            raise ValueError(f"probs must lie in [0, 1], got {bad[:3]} in {self.probs!r}")
        # Plain floats keep the task hashable and JSON-able whatever the caller passed (numpy arrays, lists).
        object.__setattr__(self, "probs", values)

    @property
    def n_arms(self) -> int:
        return len(self.probs)


def _prior(n_arms: int) -> Any:
    def prior(rng: np.random.Generator) -> BanditTask:
        return BanditTask(probs=tuple(float(p) for p in rng.uniform(0.0, 1.0, size=n_arms)))

    return prior


def _sample_tasks(n: int, rng: np.random.Generator, split: str, n_arms: int) -> list[BanditTask]:
    return sample_split(_prior(n_arms), n, rng, split)


def _default_task(n_arms: int) -> BanditTask:
    return _sample_tasks(1, np.random.default_rng(0), "train", n_arms)[0]


def bernoulli_reward(probs: FloatArray, u: FloatArray) -> FloatArray:
    """Rewards ``1.0`` where ``u < probs`` else ``0.0`` (shapes broadcast; ``u`` from ``metarl.rng.uniform``).

    The single env, the batched twin and :func:`metarl.bandits.play` all draw rewards with this function.
    """
    return (np.asarray(u) < np.asarray(probs)).astype(np.float64)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_render_mode(render_mode: Any) -> None:
    if render_mode is not None:
        raise ValueError(f"render_mode must be None (Bandit has no renderer), got {render_mode!r}")


def _check_task(task: Any, n_arms: int) -> BanditTask:
    if not isinstance(task, BanditTask):
        raise TypeError(f"task must be a BanditTask, got {type(task).__name__}: {task!r}")
    if task.n_arms != n_arms:
        raise ValueError(f"task has {task.n_arms} arms but the env has n_arms={n_arms}; build the env with "
                         f"n_arms={task.n_arms} or sample tasks with this env's sample_tasks")
    return task


def _spaces(n_arms: int) -> tuple[spaces.Box, spaces.Discrete]:
    return spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32), spaces.Discrete(n_arms)


class BanditEnv(gymnasium.Env[npt.NDArray[Any], np.int64]):
    """One Bernoulli bandit, one trial of ``n_pulls`` pulls per episode (see the module docstring).

    Args:
        n_arms: number of arms ``k`` (>= 2), default 5.
        n_pulls: pulls per trial ``n`` (>= 1), default 100; ``truncated=True`` on the n-th pull.
        task: the arm probabilities; ``None`` gives the first train task of ``sample_tasks(1, default_rng(0))``.
        render_mode: must be ``None``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, n_arms: int = DEFAULT_N_ARMS, n_pulls: int = DEFAULT_N_PULLS, task: BanditTask | None = None,
                 render_mode: str | None = None) -> None:
        self.n_arms = _check_int("n_arms", n_arms, 2)
        self.n_pulls = _check_int("n_pulls", n_pulls, 1)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.observation_space, self.action_space = _spaces(self.n_arms)
        self.set_task(_default_task(self.n_arms) if task is None else task)
        self._t = 0
        self._started = False
        self._done = False
        self._key: np.ndarray | None = None
        self._counter = 0

    @property
    def horizon(self) -> int:
        """Episode (trial) length: ``n_pulls``."""
        return self.n_pulls

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[BanditTask]:
        """``n`` bandits of ``split`` ("train" or "test"), p ~ U[0, 1]^k; ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split, self.n_arms)

    def set_task(self, task: BanditTask) -> None:
        """Set the bandit; takes effect on the next pull."""
        self._task = _check_task(task, self.n_arms)
        self._probs = np.array(task.probs, dtype=np.float64)
        self._best = float(self._probs.max())

    def get_task(self) -> BanditTask:
        return self._task

    # --- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Start a trial; ``options={"task": t}`` sets the bandit first."""
        super().reset(seed=seed)
        self._key, self._counter = reset_stream(seed, self._key, self._counter, self.np_random)
        if options is not None and "task" in options:
            self.set_task(options["task"])
        self._t = 0
        self._started = True
        self._done = False
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Pull arm ``action``: reward 1.0 with probability ``p_action``."""
        if not self._started:
            raise RuntimeError("BanditEnv.step() called before reset(); call env.reset() first")
        a = np.asarray(action)
        if a.shape not in ((), (1,)) or not np.issubdtype(a.dtype, np.integer) or not 0 <= int(a) < self.n_arms:
            raise ValueError(f"action must be an int arm index in [0, {self.n_arms}), got {action!r}")
        if self._done:
            warnings.warn("BanditEnv.step() called after the trial ended; call reset()", stacklevel=2)
        arm = int(a)
        assert self._key is not None
        reward = bernoulli_reward(self._probs[arm], uniform(self._key, self._counter))
        self._counter += 1
        self._t += 1
        truncated = self._t >= self.n_pulls
        self._done = truncated
        info = {"expected_reward": float(self._probs[arm]), "best_prob": self._best}
        return np.zeros(1, dtype=np.float32), float(reward), False, truncated, info

    def render(self) -> None:
        return None


class BanditVectorEnv(gymnasium.vector.VectorEnv[npt.NDArray[np.float32], npt.NDArray[np.int64],
                                                  npt.NDArray[Any]]):
    """``num_envs`` Bernoulli bandits with per-env arm probabilities, stepped with NumPy over ``[num_envs]``.

    Identical transitions to ``gymnasium.vector.SyncVectorEnv`` of :class:`BanditEnv` (NEXT_STEP
    autoreset: the step after a trial ends resets that sub-env, ignores its action and returns the
    reset observation with reward 0 and both flags ``False``; no counter draw is spent on it). Sub-envs
    keep their bandit across autoresets. The counter uniforms of the coming pulls are drawn a block at a
    time (:class:`metarl.rng.UniformBlocks`): the same numbers, a fraction of the per-step overhead.

    Args:
        num_envs: number of sub-envs (>= 1).
        n_arms, n_pulls, render_mode: as :class:`BanditEnv`.
        task: one bandit for every sub-env; tasks: one per sub-env (length ``num_envs``); not both.

    Shapes: observations ``[num_envs, 1]`` float32 zeros, actions ``[num_envs]`` ints, rewards
    ``[num_envs]`` float64, flags ``[num_envs]`` bool; ``info["expected_reward"]`` and
    ``info["best_prob"]`` ``[num_envs]`` float64.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, n_arms: int = DEFAULT_N_ARMS, n_pulls: int = DEFAULT_N_PULLS,
                 task: BanditTask | None = None, tasks: Sequence[BanditTask] | None = None,
                 render_mode: str | None = None) -> None:
        self.num_envs = _check_int("num_envs", num_envs, 1)
        self.n_arms = _check_int("n_arms", n_arms, 2)
        self.n_pulls = _check_int("n_pulls", n_pulls, 1)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = _spaces(self.n_arms)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        if task is not None and tasks is not None:
            raise ValueError("pass either task (the same for every sub-env) or tasks (one per sub-env), not both")
        if tasks is None:
            tasks = [_default_task(self.n_arms) if task is None else task] * self.num_envs
        self.set_tasks(tasks)
        self._clock = LockstepClock(self.num_envs, self.n_pulls, draws_per_step=1, name="BanditVectorEnv")
        self._obs = np.zeros((self.num_envs, 1), dtype=np.float32)

    @property
    def horizon(self) -> int:
        """Episode (trial) length: ``n_pulls``."""
        return self.n_pulls

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[BanditTask]:
        """``n`` bandits of ``split`` ("train" or "test"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split, self.n_arms)

    def set_tasks(self, tasks: Sequence[BanditTask]) -> None:
        """One bandit per sub-env; takes effect on the next pull."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"tasks must have one task per sub-env (num_envs={self.num_envs}), got {len(tasks)}")
        self._tasks = [_check_task(t, self.n_arms) for t in tasks]
        self._probs = np.array([t.probs for t in self._tasks], dtype=np.float64).reshape(self.num_envs, self.n_arms)
        self._best = self._probs.max(axis=1)
        self._flat_probs = self._probs.ravel()
        self._row_offsets = np.arange(self.num_envs) * self.n_arms

    def get_tasks(self) -> list[BanditTask]:
        return list(self._tasks)

    @property
    def probs(self) -> FloatArray:
        """``[num_envs, n_arms]`` arm probabilities (a copy)."""
        return self._probs.copy()

    # --- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Reset every sub-env; int ``seed`` s gives sub-env i seed s + i (as SyncVectorEnv); a list too.

        ``options={"tasks": [...]}`` sets the bandits first.
        """
        seeds = batch_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0])
        self._clock.reset(seeds, self.np_random)
        if options is not None and "tasks" in options:
            self.set_tasks(options["tasks"])
        return self._obs.copy(), {}

    def step(self, actions: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], FloatArray, npt.NDArray[np.bool_],
                                                     npt.NDArray[np.bool_], dict[str, Any]]:
        """Pull one arm in every sub-env (resetting those whose trial ended on the previous step)."""
        clock = self._clock
        a = clock.begin(actions, self.n_arms, "arm indices")
        if a is None:  # every trial ended on the previous step: every sub-env just resets, nothing is drawn
            zeros = np.zeros(self.num_envs)
            flags = np.zeros(self.num_envs, dtype=np.bool_)
            return (self._obs.copy(), zeros, flags, flags.copy(),
                    {"expected_reward": zeros.copy(), "best_prob": self._best.copy()})
        p = self._flat_probs.take(self._row_offsets + a)
        u = clock.noise(lambda keys, counters: uniform(keys, counters)[:, None])[:, 0]
        reward = bernoulli_reward(p, u)
        expected = p if clock.live is None else np.where(clock.live, p, 0.0)
        terminated, truncated = clock.end(reward)
        info = {"expected_reward": expected, "best_prob": self._best.copy()}
        return self._obs.copy(), reward, terminated, truncated, info
