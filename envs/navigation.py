"""2-D point navigation to a goal: the MAML ``Navigation2D`` task family (id ``metarl/Navigation2D-v0``).

Definition (Finn et al., 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
Sec. 5.2; reference code ``cbfinn/maml_rl``, ``maml_examples/point_env_randgoal.py``):

- Task: a goal ``g = (gx, gy)``; training/test goals ~ U[-0.5, 0.5]^2.
- Observation: the agent's 2-D position ``s``, float32, ``(0, 0)`` at every reset.
- Action: a 2-D velocity, clipped elementwise to [-0.1, 0.1]; ``s' = s + clip(a)``.
- Reward: ``-||s' - g||_2`` (distance after the move).
- Terminated when ``|x' - gx| < 0.01`` and ``|y' - gy| < 0.01`` (a box, not a disc, as in the code).
- Horizon ``H = 100``: ``truncated=True`` on the H-th step of an episode.

Choices where the paper and codebases disagree, and what we do:

- **Distance, not squared distance.** The paper's text says "the negative squared distance to the
  goal"; the released code (and every reimplementation we know: maml-pytorch, garage, ProMP,
  learn2learn) uses the Euclidean distance. We follow the code, so returns are comparable with the
  published numbers (which come from the code).
- **Clipping.** Policies output unbounded Gaussian samples. In the reference code the env is wrapped in
  rllab's ``normalize``, which maps [-1, 1] onto [-0.1, 0.1] and clips; maml-pytorch clips to [-0.1, 0.1]
  inside the env. We expose ``action_space = Box(-0.1, 0.1, (2,))`` and clip inside the env, so any
  action, infinite ones included, is legal (the log-probability of the *unclipped* sample is what policy
  gradients use). NaN actions raise ``ValueError``: they are always a bug upstream.
- **Truncation and termination together.** When the goal box is reached on the H-th step, both flags
  are ``True`` (as Gymnasium's ``TimeLimit`` would set them); learners must let ``terminated`` win.
- **Observation bounds.** The reference uses an unbounded Box. The position moves at most 0.1 per
  coordinate per step, so ``|x|, |y| <= 0.1 * H``; we use that bounded Box (plus one float32 ulp of slack
  for rounding in the accumulated sum).
- **Out-of-distribution split** (``split="ood"``, not in the paper): goals uniform on the square ring
  ``[-1, 1]^2 \\ [-0.5, 0.5]^2`` (rejection sampling), i.e. farther than any training goal in at
  least one coordinate, still reachable well within ``H`` steps.
- **Oracle** (``oracle=True``): the goal is appended to the observation (obs dim 4), the "oracle"
  baseline of the MAML paper's Figure 5. The goal dims are bounded by [-1, 1] (all priors, OOD
  included); with ``oracle=True`` a task whose goal lies outside [-1, 1]^2 is rejected.

There is no randomness inside an episode; only tasks are random. The counter-based RNG key of the
reset/seed contract is still kept (``metarl.rng``) so the family behaves like every other one.

Version semantics: ``-v0``. Any change to the dynamics, reward, clipping, termination box, default
horizon, observation layout, goal priors or split assignment bumps the version to ``-v1``.

Example::

    >>> import numpy as np
    >>> env = Navigation2DEnv(task=NavigationTask(goal=(0.2, 0.0)))
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0]))  # clipped to 0.1
    >>> obs.tolist(), round(reward, 6), terminated
    ([0.10000000149011612, 0.0], -0.1, False)
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

from metarl.rng import batch_seeds, rekey, reset_stream
from metarl.tasks import sample_split
from metarl.types import Task

__all__ = ["NavigationTask", "Navigation2DEnv", "Navigation2DVectorEnv"]

MAX_SPEED = 0.1
"""Largest absolute action per coordinate (the env clips to [-MAX_SPEED, MAX_SPEED])."""
GOAL_TOLERANCE = 0.01
"""Terminated when both coordinates are within this of the goal (reference code)."""
GOAL_LOW, GOAL_HIGH = -0.5, 0.5
"""In-distribution goal prior U[GOAL_LOW, GOAL_HIGH]^2 (MAML paper)."""
OOD_HIGH = 1.0
"""OOD goals: uniform on [-OOD_HIGH, OOD_HIGH]^2 minus [GOAL_LOW, GOAL_HIGH]^2."""
DEFAULT_HORIZON = 100

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NavigationTask(Task):
    """A Navigation2D task: the goal position ``(gx, gy)``."""

    family: ClassVar[str] = "navigation2d"

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        goal = self.goal
        try:
            values = tuple(float(v) for v in goal)
        except (TypeError, ValueError):
            raise ValueError(f"goal must be a pair of finite floats (gx, gy), got {goal!r}") from None
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"goal must be a pair of finite floats (gx, gy), got {goal!r}")
        # Plain floats keep the task hashable and JSON-able whatever the caller passed (numpy scalars, lists).
        object.__setattr__(self, "goal", values)


def _prior(rng: np.random.Generator) -> NavigationTask:
    gx, gy = rng.uniform(GOAL_LOW, GOAL_HIGH, size=2)
    return NavigationTask(goal=(float(gx), float(gy)))


def _ood_prior(rng: np.random.Generator) -> NavigationTask:
    while True:  # acceptance rate 3/4
        gx, gy = rng.uniform(-OOD_HIGH, OOD_HIGH, size=2)
        if max(abs(gx), abs(gy)) > GOAL_HIGH:
            return NavigationTask(goal=(float(gx), float(gy)))


def _sample_tasks(n: int, rng: np.random.Generator, split: str) -> list[NavigationTask]:
    return sample_split(_prior, n, rng, split, ood_prior=_ood_prior)


def _default_task() -> NavigationTask:
    return _sample_tasks(1, np.random.default_rng(0), "train")[0]


def transition(pos: FloatArray, action: FloatArray, goal: FloatArray) -> tuple[FloatArray, FloatArray, np.ndarray]:
    """One Navigation2D step, shared by the single env and the batched twin (so they agree bit for bit).

    Args:
        pos: ``[..., 2]`` float64 positions.
        action: ``[..., 2]`` float64 raw actions (clipped here).
        goal: ``[..., 2]`` float64 goals.

    Returns:
        ``(next_pos [..., 2], reward [...], terminated [...] bool)``.
    """
    # minimum/maximum rather than np.clip: same numbers, a third of the call overhead on small arrays.
    next_pos = pos + np.minimum(np.maximum(action, -MAX_SPEED), MAX_SPEED)
    d = next_pos - goal
    sq = d * d
    # Euclidean distance as in the reference code (the paper's text says "squared"): see module docstring.
    reward = np.negative(np.sqrt(sq[..., 0] + sq[..., 1]))
    near = np.abs(d) < GOAL_TOLERANCE
    terminated = near[..., 0] & near[..., 1]
    return next_pos, reward, terminated


def _check_horizon(horizon: Any) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    return int(horizon)


def _check_oracle(oracle: Any) -> bool:
    if not isinstance(oracle, (bool, np.bool_)):
        raise ValueError(f"oracle must be a bool, got {oracle!r}")
    return bool(oracle)


def _check_render_mode(render_mode: Any) -> None:
    if render_mode is not None:
        raise ValueError(f"render_mode must be None (Navigation2D has no renderer), got {render_mode!r}")


def _check_task(task: Any, oracle: bool) -> NavigationTask:
    if not isinstance(task, NavigationTask):
        raise TypeError(f"task must be a NavigationTask, got {type(task).__name__}: {task!r}")
    if oracle and max(abs(task.goal[0]), abs(task.goal[1])) > OOD_HIGH:
        raise ValueError(
            f"with oracle=True the goal is observed and must lie in [-{OOD_HIGH}, {OOD_HIGH}]^2 (the observation "
            f"space), got {task.goal}; use oracle=False for farther goals"
        )
    return task


def _spaces(horizon: int, oracle: bool) -> tuple[spaces.Box, spaces.Box]:
    """``(observation_space, action_space)`` of one env."""
    # One float32 ulp of slack: float64 sums of H steps of 0.1 may round just above 0.1 * H.
    bound = np.nextafter(np.float32(MAX_SPEED * horizon), np.float32(np.inf))
    low = [-bound, -bound]
    high = [bound, bound]
    if oracle:
        low += [-OOD_HIGH, -OOD_HIGH]
        high += [OOD_HIGH, OOD_HIGH]
    observation_space = spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                                   dtype=np.float32)
    action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
    return observation_space, action_space


class Navigation2DEnv(gymnasium.Env[npt.NDArray[np.float32], npt.NDArray[np.float32]]):
    """The MAML point-navigation env (see the module docstring for the definition and choices).

    Args:
        horizon: episode length ``H`` (truncated on the H-th step), default 100.
        oracle: append the goal to the observation (obs shape ``(4,)`` instead of ``(2,)``).
        task: the goal; ``None`` gives the first train task of ``sample_tasks(1, default_rng(0))``.
        render_mode: must be ``None``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, horizon: int = DEFAULT_HORIZON, oracle: bool = False, task: NavigationTask | None = None,
                 render_mode: str | None = None) -> None:
        self.horizon = _check_horizon(horizon)
        self.oracle = _check_oracle(oracle)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.observation_space, self.action_space = _spaces(self.horizon, self.oracle)  # type: ignore[assignment]
        self._task = _check_task(_default_task() if task is None else task, self.oracle)
        self._goal = np.array(self._task.goal, dtype=np.float64)
        self._pos: FloatArray | None = None
        self._t = 0
        self._done = False
        self._key: np.ndarray | None = None
        self._counter = 0

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[NavigationTask]:
        """``n`` goals of ``split`` ("train", "test" or "ood"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split)

    def set_task(self, task: NavigationTask) -> None:
        """Set the goal; takes effect immediately (call ``reset`` to start an episode for it)."""
        self._task = _check_task(task, self.oracle)
        self._goal = np.array(task.goal, dtype=np.float64)

    def get_task(self) -> NavigationTask:
        return self._task

    # --- gymnasium API ----------------------------------------------------------------------------
    def _obs(self) -> npt.NDArray[np.float32]:
        assert self._pos is not None
        if self.oracle:
            return np.concatenate([self._pos, self._goal]).astype(np.float32)
        return self._pos.astype(np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Start an episode at (0, 0); ``options={"task": t}`` sets the task first."""
        super().reset(seed=seed)
        self._key, self._counter = reset_stream(seed, self._key, self._counter, self.np_random)
        if options is not None and "task" in options:
            self.set_task(options["task"])
        self._pos = np.zeros(2, dtype=np.float64)
        self._t = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Move by ``clip(action, -0.1, 0.1)``; reward ``-||s' - g||``."""
        if self._pos is None:
            raise RuntimeError("Navigation2DEnv.step() called before reset(); call env.reset() first")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,), got shape {a.shape}")
        if np.isnan(a).any():
            raise ValueError(f"action must not be NaN, got {a.tolist()}; check the policy for NaN outputs")
        if self._done:
            warnings.warn("Navigation2DEnv.step() called after the episode ended; call reset()", stacklevel=2)
        self._pos, reward, terminated = transition(self._pos, a, self._goal)
        self._t += 1
        truncated = self._t >= self.horizon
        self._done = bool(terminated) or truncated
        return self._obs(), float(reward), bool(terminated), truncated, {}

    def render(self) -> None:
        return None


class Navigation2DVectorEnv(gymnasium.vector.VectorEnv[npt.NDArray[np.float32], npt.NDArray[np.float32],
                                                        npt.NDArray[Any]]):
    """``num_envs`` Navigation2D envs with per-env goals, stepped with NumPy over ``[num_envs, 2]``.

    Identical transitions to ``gymnasium.vector.SyncVectorEnv`` of :class:`Navigation2DEnv` (NEXT_STEP
    autoreset: the step after an env's episode ends resets that env, ignores its action and returns the
    reset observation with reward 0 and both flags ``False``). Sub-envs keep their task across autoresets.

    Args:
        num_envs: number of sub-envs (>= 1).
        horizon, oracle, render_mode: as :class:`Navigation2DEnv`.
        task: one task for every sub-env (what ``make_vec(..., task=t)`` gives with SyncVectorEnv).
        tasks: one task per sub-env (length ``num_envs``); not together with ``task``.

    Shapes: observations ``[num_envs, 2]`` (``[num_envs, 4]`` with ``oracle``) float32, actions
    ``[num_envs, 2]``, rewards ``[num_envs]`` float64, flags ``[num_envs]`` bool.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, horizon: int = DEFAULT_HORIZON, oracle: bool = False,
                 task: NavigationTask | None = None, tasks: Sequence[NavigationTask] | None = None,
                 render_mode: str | None = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.horizon = _check_horizon(horizon)
        self.oracle = _check_oracle(oracle)
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = _spaces(self.horizon, self.oracle)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        if task is not None and tasks is not None:
            raise ValueError("pass either task (the same for every sub-env) or tasks (one per sub-env), not both")
        if tasks is None:
            tasks = [_default_task() if task is None else task] * self.num_envs
        self.set_tasks(tasks)
        self._pos = np.zeros((self.num_envs, 2), dtype=np.float64)
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._started = False
        self._keys = np.zeros(self.num_envs, dtype=np.uint64)
        self._has_key = np.zeros(self.num_envs, dtype=np.bool_)
        self._counters = np.zeros(self.num_envs, dtype=np.uint64)

    # --- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[NavigationTask]:
        """``n`` goals of ``split`` ("train", "test" or "ood"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split)

    def set_tasks(self, tasks: Sequence[NavigationTask]) -> None:
        """One task per sub-env; takes effect immediately (positions are kept until the next reset)."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"tasks must have one task per sub-env (num_envs={self.num_envs}), got {len(tasks)}")
        self._tasks = [_check_task(t, self.oracle) for t in tasks]
        self._goals = np.array([t.goal for t in self._tasks], dtype=np.float64).reshape(self.num_envs, 2)
        self._goals32 = self._goals.astype(np.float32)

    def get_tasks(self) -> list[NavigationTask]:
        return list(self._tasks)

    # --- gymnasium API ----------------------------------------------------------------------------
    def _obs(self) -> npt.NDArray[np.float32]:
        if self.oracle:
            return np.concatenate([self._pos.astype(np.float32), self._goals32], axis=1)
        return self._pos.astype(np.float32)

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Reset every sub-env; int ``seed`` s gives sub-env i seed s + i (as SyncVectorEnv); a list too.

        ``options={"tasks": [...]}`` sets the tasks first.
        """
        seeds = batch_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0])
        self._counters[rekey(seeds, self._keys, self._has_key, self.np_random)] = 0
        if options is not None and "tasks" in options:
            self.set_tasks(options["tasks"])
        self._pos = np.zeros((self.num_envs, 2), dtype=np.float64)
        self._t[:] = 0
        # A fresh mask, never an in-place write: arrays step returned must not change after the caller got them.
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._started = True
        return self._obs(), {}

    def step(self, actions: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], FloatArray, npt.NDArray[np.bool_],
                                                     npt.NDArray[np.bool_], dict[str, Any]]:
        """Step every sub-env (resetting those whose episode ended on the previous step)."""
        if not self._started:
            raise RuntimeError("Navigation2DVectorEnv.step() called before reset(); call envs.reset() first")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got shape {a.shape}")
        resetting = self._autoreset
        pos, reward, terminated = transition(self._pos, a, self._goals)
        # A NaN action makes its reward NaN (inf is clipped like any large action); one reduction finds it.
        total = np.add.reduce(reward)
        if total != total and np.isnan(a[~resetting]).any():
            raise ValueError("actions must not be NaN; check the policy for NaN outputs")
        self._t += 1
        truncated = self._t >= self.horizon
        if np.count_nonzero(resetting):
            # NEXT_STEP autoreset (SyncVectorEnv semantics): the ignored action is overwritten here.
            pos[resetting] = 0.0
            self._t[resetting] = 0
            reward[resetting] = 0.0
            terminated[resetting] = False
            truncated[resetting] = False
        self._pos = pos
        self._autoreset = terminated | truncated
        return self._obs(), reward, terminated, truncated, {}
