"""CartPole with per-task physics and a per-task action sign: a balance task where adaptation matters.

Physics (Barto, Sutton & Anderson 1983, "Neuronlike adaptive elements that can solve difficult
learning control problems", frictionless form, as in Gymnasium's ``CartPole-v1``)::

    temp    = (F + m_p l θ̇² sin θ) / (m_c + m_p)
    θ̈       = (g sin θ − cos θ · temp) / (l (4/3 − m_p cos² θ / (m_c + m_p)))
    ẍ       = temp − m_p l θ̈ cos θ / (m_c + m_p)

integrated with explicit Euler, τ = 0.02 s (x and θ are advanced with the *old* velocities, as in
Gymnasium's default ``kinematics_integrator="euler"``). ``l`` is the pole's *half*-length. The force is
``F = action_sign · force_mag · (+1 if action == 1 else −1)``. With the default task
(:data:`DEFAULT_TASK`: g = 9.8, m_c = 1.0, m_p = 0.1, l = 0.5, force 10, sign +1) the env reproduces
``CartPole-v1`` step for step except for the horizon; the code divides the equations through by the
total mass (:func:`euler_step`), so single steps agree to about 1e-15 relative, not bit for bit.

Task (:class:`CartPoleTask`): ``gravity``, ``masscart``, ``masspole``, ``length`` (half-length),
``force_mag`` and ``action_sign`` (+1 or −1). The parameters are **not** observed; ``oracle=True``
appends them (normalised, see :func:`oracle_features`) to the observation.

Why an action sign. Physical shifts of the size used elsewhere (RLlib's ``CartPoleMassEnv``, CARL) are
mild for the balance task: one robust policy balances nearly all of them (in
``benchmarks/cartpole_gap.py`` the memoryless PPO policy balances the tasks of the sign it masters,
across the whole training box, for nearly the full horizon). With ``action_sign = −1``
the two actions swap meaning, so a policy that does not know (or infer) the sign pushes the wrong way
half of the time; a memoryless policy cannot do well on both signs, while one transition
(the change of cart velocity after a known action) reveals the sign. ``benchmarks/cartpole_gap.py``
measures it with PPO (400k steps, 2 seeds, 200 test tasks, H = 200): robust policy 104 ± 13 (about 197
on the sign it masters, 12 on the other), oracle 200 ± 0, one step of history 199 ± 1, random 28 ± 2.

Ranges (train/test prior, all independent, uniform; the OOD column is filtered, see below):

=============  ===============  =======================================================
parameter      train/test       out-of-distribution (``split="ood"``)
=============  ===============  =======================================================
gravity        U[5, 15]         U[2.5, 20]
masscart       U[0.5, 2.0]      U[0.25, 3.0]
masspole       U[0.05, 0.5]     U[0.025, 1.0]
length         U[0.25, 1.0]     U[0.15, 1.5]
force_mag      U[5, 15]         U[3, 20]
action_sign    ±1, p = 1/2      ±1, p = 1/2
=============  ===============  =======================================================

CARL's ranges (gravity [5, 15], masscart [0.5, 2], masspole [0.05, 0.2], half-length [0.25, 1],
force [5, 15]) are kept, with masspole widened to 0.5 (pole as heavy as a light cart). The OOD prior
draws from the wider box and keeps a task only if (a) at least one parameter lies outside its training
range (in practice 1-5 of them, most often 2), and (b) it is no harder than the hardest training task on
two physical measures, its control authority ``force_mag / ((masscart + masspole) · gravity)`` (about
the steepest angle a push can still recover from; >= :data:`MIN_AUTHORITY` = 0.133) and its kick
``τ² force_mag / (length (4/3 masscart + 1/3 masspole))`` (the pole-angle jerk of one push; <=
:data:`MAX_KICK` = 0.035 rad). Without (b) some corners of the wider box cannot be balanced at all:
too weak a push, or one so strong that bang-bang control at 50 Hz overshoots a light, short pole.
Solvability is checked in ``tests/test_cartpole_dynamics.py``: a bang-bang LQR controller that knows
the task balances every corner of the training box, and sampled OOD tasks, for the whole horizon
(checked once, not in the tests, on 2000 OOD tasks × 8 initial states and the 22 of the 32 corners of
the wider box that pass (b): no failure).

Splits: ``sample_tasks(n, rng, split)`` uses :func:`metarl.tasks.sample_split`: ``train`` and ``test``
are disjoint by the hash of the task's value (20% of the prior's mass is ``test``); ``ood`` as above.

Choices where codebases disagree:

- Horizon: ``CartPole-v0`` used 200 steps, ``v1`` uses 500. Default ``horizon=200``: a balanced pole is
  already obvious after 4 simulated seconds, and meta-RL trials hold several episodes, so 200 keeps
  a trial affordable. ``truncated=True`` at the horizon (no TimeLimit wrapper).
- Reward +1 on every step, including the terminating one (Gymnasium's default, not Sutton & Barto's
  −1 on failure).
- Termination when ``|x| > 2.4`` or ``|θ| > 12°`` (Gymnasium). Stepping after the episode ended
  raises ``RuntimeError`` (Gymnasium warns and keeps simulating).
- Derived quantities (total mass, pole mass × half-length) are recomputed whenever a task is set;
  RLlib's ``CartPoleMassEnv`` changes the masses but keeps the stale ``total_mass`` and
  ``polemass_length``.
- Initial state U(−0.05, 0.05)^4 from the counter RNG (:mod:`metarl.rng`, four draws per reset), so
  the single env and :class:`CartPoleDynamicsVectorEnv` give identical episodes for identical seeds.
- ``set_task`` in the middle of an episode is legal: the new physics apply from the next step.
- Observation space: Gymnasium's bounds (±4.8 m, ±24°, velocities unbounded), float32; the oracle
  entries are unbounded because any positive parameters make a legal task.

Versions: ``metarl/CartPoleDynamics-v0`` — this definition. Any change to the equations, ranges,
splits, horizon or the random draws will get a new version number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from metarl import rng as counter_rng
from metarl.tasks import sample_split
from metarl.types import Task

TAU = 0.02
"""Seconds per step (Euler integration step)."""
X_THRESHOLD = 2.4
"""The episode terminates when the cart leaves [-2.4, 2.4] m."""
THETA_THRESHOLD = 12 * 2 * math.pi / 360
"""The episode terminates when the pole is more than 12 degrees from upright (radians)."""
INIT_LOW, INIT_HIGH = -0.05, 0.05
"""Every state variable starts uniform in [INIT_LOW, INIT_HIGH)."""

PARAM_NAMES: tuple[str, ...] = ("gravity", "masscart", "masspole", "length", "force_mag")
"""The continuous task parameters, in the order of :func:`oracle_features`."""
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "gravity": (5.0, 15.0),
    "masscart": (0.5, 2.0),
    "masspole": (0.05, 0.5),
    "length": (0.25, 1.0),
    "force_mag": (5.0, 15.0),
}
"""Uniform ranges of the train/test prior."""
OOD_RANGES: dict[str, tuple[float, float]] = {
    "gravity": (2.5, 20.0),
    "masscart": (0.25, 3.0),
    "masspole": (0.025, 1.0),
    "length": (0.15, 1.5),
    "force_mag": (3.0, 20.0),
}
"""The wider box the ``ood`` prior draws from (then filtered: see :func:`ood_prior`)."""
MIN_AUTHORITY = TRAIN_RANGES["force_mag"][0] / (
    (TRAIN_RANGES["masscart"][1] + TRAIN_RANGES["masspole"][1]) * TRAIN_RANGES["gravity"][1])
"""Smallest :attr:`CartPoleTask.authority` in the training box (5 / (2.5 * 15) = 0.133): the OOD floor."""
MAX_KICK = TAU**2 * TRAIN_RANGES["force_mag"][1] / (
    TRAIN_RANGES["length"][0] * (4 / 3 * TRAIN_RANGES["masscart"][0] + 1 / 3 * TRAIN_RANGES["masspole"][0]))
"""Largest :attr:`CartPoleTask.kick` in the training box (0.035 rad): the OOD ceiling."""
N_ORACLE_FEATURES = len(PARAM_NAMES) + 1
"""Extra observation entries with ``oracle=True``: five normalised parameters and the action sign."""

_OBS_HIGH = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
_DRAWS = np.arange(4, dtype=np.uint64)
_BUFFER = 16
"""Initial states the batched env draws ahead per sub-env (one counter-RNG call for many autoresets)."""
_BUFFER_DRAWS = np.arange(4 * _BUFFER, dtype=np.uint64)


@dataclasses.dataclass(frozen=True)
class CartPoleTask(Task):
    """Physical parameters and action sign of one CartPole task (defaults: Gymnasium's CartPole).

    Fields:
        gravity: m/s², > 0.
        masscart: kg, > 0.
        masspole: kg, > 0.
        length: half the pole's length, m, > 0.
        force_mag: magnitude of the push, N, > 0.
        action_sign: +1 (action 1 pushes right, as in Gymnasium) or -1 (the actions are swapped).
    """

    family: ClassVar[str] = "cartpole_dynamics"
    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    force_mag: float = 10.0
    action_sign: int = 1

    def __post_init__(self) -> None:
        # Coerce NumPy scalars to Python numbers: tasks must stay JSON-able and compare/hash as values.
        for name in PARAM_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"CartPoleTask.{name} must be a real number, got {value!r}")
            value = float(value)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"CartPoleTask.{name} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, value)
        sign = self.action_sign
        if isinstance(sign, bool) or not isinstance(sign, (int, np.integer)) or int(sign) not in (-1, 1):
            raise ValueError(f"CartPoleTask.action_sign must be the int +1 or -1, got {sign!r}")
        object.__setattr__(self, "action_sign", int(sign))

    @property
    def total_mass(self) -> float:
        """Cart plus pole mass (kg)."""
        return self.masscart + self.masspole

    @property
    def polemass_length(self) -> float:
        """Pole mass times half-length (kg·m)."""
        return self.masspole * self.length

    @property
    def authority(self) -> float:
        """``force_mag / (total_mass * gravity)``: about the steepest pole angle (rad) at which a push can
        still stop the pole from falling (small: a weak push, hard to balance)."""
        return self.force_mag / (self.total_mass * self.gravity)

    @property
    def kick(self) -> float:
        """Pole-angle change (rad) two steps after one push from upright, ``τ² F / (l (4/3 m_c + 1/3 m_p))``
        (large: every push jerks the pole, so bang-bang control at 50 Hz overshoots)."""
        return TAU**2 * self.force_mag / (self.length * (4 / 3 * self.masscart + 1 / 3 * self.masspole))


DEFAULT_TASK = CartPoleTask()
"""Gymnasium ``CartPole-v1``'s parameters, action sign +1: the task of an env built with ``task=None``."""


def _uniform_task(rng: np.random.Generator, ranges: dict[str, tuple[float, float]]) -> CartPoleTask:
    values = {name: float(rng.uniform(*ranges[name])) for name in PARAM_NAMES}
    sign = 1 if rng.random() < 0.5 else -1
    return CartPoleTask(**values, action_sign=sign)


def train_prior(rng: np.random.Generator) -> CartPoleTask:
    """One task from the in-distribution prior (``TRAIN_RANGES``, sign ±1 with probability 1/2)."""
    return _uniform_task(rng, TRAIN_RANGES)


def in_training_box(task: CartPoleTask) -> bool:
    """Whether every continuous parameter of ``task`` lies inside its training range."""
    return all(TRAIN_RANGES[n][0] <= getattr(task, n) <= TRAIN_RANGES[n][1] for n in PARAM_NAMES)


def ood_prior(rng: np.random.Generator) -> CartPoleTask:
    """One task from the out-of-distribution prior: the ``OOD_RANGES`` box, at least one parameter
    outside the training box, ``authority >= MIN_AUTHORITY`` and ``kick <= MAX_KICK`` (rejection
    sampling; about 90% of draws are kept)."""
    while True:
        task = _uniform_task(rng, OOD_RANGES)
        if not in_training_box(task) and task.authority >= MIN_AUTHORITY and task.kick <= MAX_KICK:
            return task


def oracle_features(tasks: Sequence[CartPoleTask]) -> npt.NDArray[np.float64]:
    """``[n, 6]`` features an oracle observes: each parameter mapped linearly from its training range
    to [-1, 1] (OOD values fall outside, between about -1.5 and 3.2), then the action sign (±1)."""
    raw = np.array([[getattr(t, n) for n in PARAM_NAMES] for t in tasks], dtype=np.float64).reshape(-1, 5)
    lo = np.array([TRAIN_RANGES[n][0] for n in PARAM_NAMES])
    hi = np.array([TRAIN_RANGES[n][1] for n in PARAM_NAMES])
    signs = np.array([float(t.action_sign) for t in tasks], dtype=np.float64).reshape(-1, 1)
    return np.concatenate([2.0 * (raw - lo) / (hi - lo) - 1.0, signs], axis=1)


class Coefficients(NamedTuple):
    """Per-task constants of the equations of motion, derived from a task's parameters.

    Every field is a float for one task or a ``[N]`` array for ``N`` tasks. With ``M = m_c + m_p``:

    Fields:
        gravity: ``g``.
        push_right: ``action_sign · force_mag / M``, the push term of action 1 (minus it for action 0).
        pml_per_mass: ``m_p l / M``.
        four_thirds_length: ``4/3 · l``.
        lmp_per_mass: ``l m_p / M``.
    """

    gravity: Any
    push_right: Any
    pml_per_mass: Any
    four_thirds_length: Any
    lmp_per_mass: Any


def coefficients(gravity: Any, masscart: Any, masspole: Any, length: Any, force_mag: Any,
                 action_sign: Any) -> Coefficients:
    """The :class:`Coefficients` of tasks given by their parameters (floats or ``[N]`` arrays)."""
    total_mass = masscart + masspole
    return Coefficients(
        gravity=gravity,
        push_right=action_sign * force_mag / total_mass,
        pml_per_mass=masspole * length / total_mass,
        four_thirds_length=4.0 / 3.0 * length,
        lmp_per_mass=length * masspole / total_mass,
    )


def euler_step(
    x: Any, x_dot: Any, theta: Any, theta_dot: Any, push: Any, c: Coefficients,
    sin: Callable[[Any], Any] = np.sin, cos: Callable[[Any], Any] = np.cos,
) -> tuple[Any, Any, Any, Any]:
    """One Euler step (τ = :data:`TAU`) of the frictionless Barto et al. (1983) cart-pole.

    The module docstring's equations divided through by ``M``: ``temp = F/M + (m_p l/M) θ̇² sin θ``,
    ``θ̈ = (g sin θ − cos θ · temp) / (4/3 l − (l m_p/M) cos² θ)``,
    ``ẍ = temp − (m_p l/M) θ̈ cos θ``,
    which saves the batched env five array operations per step (same values up to rounding).

    Works elementwise on Python floats (pass ``math.sin``/``math.cos``) or on broadcastable arrays,
    e.g. ``[N]`` state components with ``[N]`` coefficients. The single env and its batched twin both
    call this function, so both perform the same floating-point operations in the same order.

    Args:
        x, x_dot, theta, theta_dot: the state.
        push: ``F / M`` of the chosen action (``±c.push_right``).
        c: the task's :class:`Coefficients`.

    Returns:
        ``(x, x_dot, theta, theta_dot)`` after one step, each shaped like the inputs.
    """
    sin_t = sin(theta)
    cos_t = cos(theta)
    temp = push + c.pml_per_mass * (theta_dot * theta_dot * sin_t)
    theta_acc = (c.gravity * sin_t - cos_t * temp) / (c.four_thirds_length - c.lmp_per_mass * (cos_t * cos_t))
    x_acc = temp - c.pml_per_mass * theta_acc * cos_t
    return x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc


def _check_kwargs(horizon: Any, oracle: Any, render_mode: Any) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1 (steps per episode), got {horizon!r}")
    if not isinstance(oracle, (bool, np.bool_)):
        raise ValueError(f"oracle must be a bool (True appends the task parameters to the observation), "
                         f"got {oracle!r}")
    if render_mode is not None:
        raise ValueError(f"render_mode must be None (CartPoleDynamics does not render), got {render_mode!r}")


def _check_task(task: Any) -> CartPoleTask:
    if not isinstance(task, CartPoleTask):
        raise TypeError(f"expected a CartPoleTask, got {type(task).__name__}: {task!r}; "
                        "create one with CartPoleTask(...) or env.sample_tasks(n)")
    return task


def _observation_space(oracle: bool) -> spaces.Box:
    high = _OBS_HIGH
    if oracle:
        # Tasks outside every documented range are legal, so the oracle entries are unbounded.
        high = np.concatenate([high, np.full(N_ORACLE_FEATURES, np.inf, dtype=np.float32)])
    return spaces.Box(-high, high, dtype=np.float32)


def _sample_tasks(n: int, rng: np.random.Generator, split: str) -> list[CartPoleTask]:
    return sample_split(train_prior, n, rng, split, ood_prior=ood_prior)


class CartPoleDynamicsEnv(gymnasium.Env[np.ndarray, np.int64]):
    """CartPole whose physics and action sign are set per task (see the module docstring).

    Observation: ``[4]`` float32 ``(x, x_dot, theta, theta_dot)``, plus ``[6]`` task features with
    ``oracle=True``. Action: Discrete(2), 1 pushes with ``+action_sign · force_mag``, 0 with the opposite.

    Args:
        horizon: steps per episode before ``truncated=True`` (default 200).
        oracle: append :func:`oracle_features` of the current task to the observation.
        task: the initial task; ``None`` is :data:`DEFAULT_TASK` (Gymnasium's CartPole parameters).
        render_mode: only ``None``.
    """

    metadata: dict[str, Any] = {"render_modes": [], "render_fps": 50}

    def __init__(self, horizon: int = 200, oracle: bool = False, task: CartPoleTask | None = None,
                 render_mode: str | None = None) -> None:
        _check_kwargs(horizon, oracle, render_mode)
        self.horizon = int(horizon)
        self.oracle = bool(oracle)
        self.render_mode = render_mode
        self.observation_space = _observation_space(self.oracle)
        self.action_space = spaces.Discrete(2)
        self._key: np.ndarray | None = None
        self._counter = 0
        self._state: tuple[float, float, float, float] | None = None
        self._steps = 0
        self._done = False
        self.set_task(DEFAULT_TASK if task is None else task)

    # -- meta verbs ---------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[CartPoleTask]:
        """``n`` tasks of ``split`` ("train", "test" or "ood"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split)

    def set_task(self, task: CartPoleTask) -> None:
        """Set the physics and action sign; every derived quantity is recomputed here."""
        self._task = _check_task(task)
        self.gravity = task.gravity
        self.masscart = task.masscart
        self.masspole = task.masspole
        self.length = task.length
        self.force_mag = task.force_mag
        self.action_sign = task.action_sign
        self.total_mass = task.masscart + task.masspole
        self.polemass_length = task.masspole * task.length
        self.coefficients = coefficients(task.gravity, task.masscart, task.masspole, task.length,
                                         task.force_mag, float(task.action_sign))
        self._features = oracle_features([task])[0]

    def get_task(self) -> CartPoleTask:
        return self._task

    # -- gymnasium API ------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        assert self._state is not None
        if self.oracle:
            return np.concatenate([np.array(self._state), self._features]).astype(np.float32)
        return np.array(self._state, dtype=np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            unknown = sorted(set(options) - {"task"})
            if unknown:
                raise ValueError(f"unknown reset option(s) {unknown}; the only option is 'task'")
            if options.get("task") is not None:
                self.set_task(options["task"])
        self._key, self._counter = counter_rng.reset_stream(seed, self._key, self._counter, self.np_random)
        u = counter_rng.uniform(self._key, self._counter + _DRAWS)
        self._counter += 4
        s = INIT_LOW + (INIT_HIGH - INIT_LOW) * u
        self._state = (float(s[0]), float(s[1]), float(s[2]), float(s[3]))
        self._steps = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: int | np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated); call reset() before step()")
        if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
            action = int(action)
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or action not in (0, 1):
            raise ValueError(f"action must be 0 or 1 (Discrete(2)), got {action!r}")
        c = self.coefficients
        x, x_dot, theta, theta_dot = euler_step(
            *self._state, c.push_right if action == 1 else -c.push_right, c, sin=math.sin, cos=math.cos)
        self._state = (x, x_dot, theta, theta_dot)
        self._steps += 1
        terminated = bool(abs(x) > X_THRESHOLD or abs(theta) > THETA_THRESHOLD)
        truncated = self._steps >= self.horizon
        self._done = terminated or truncated
        return self._obs(), 1.0, terminated, truncated, {}


class CartPoleDynamicsVectorEnv(
        VectorEnv[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]]):
    """``num_envs`` CartPoleDynamics envs stepped together in NumPy, each with its own task.

    Same transitions as ``gymnasium.vector.SyncVectorEnv`` over :class:`CartPoleDynamicsEnv` with the
    same tasks and seeds (NEXT_STEP autoreset: the step after an episode ends resets that env, ignores
    its action and returns reward 0, terminated and truncated False). Sub-envs keep their task across
    autoresets. ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i``.

    Shapes: observations ``[num_envs, 4]`` (``[num_envs, 10]`` with ``oracle``) float32, actions
    ``[num_envs]`` ints in {0, 1}, rewards ``[num_envs]`` float64, terminated/truncated ``[num_envs]`` bool.
    """

    metadata: dict[str, Any] = {"render_modes": [], "render_fps": 50,
                                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, horizon: int = 200, oracle: bool = False,
                 task: CartPoleTask | None = None, render_mode: str | None = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        _check_kwargs(horizon, oracle, render_mode)
        self.num_envs = int(num_envs)
        self.horizon = int(horizon)
        self.oracle = bool(oracle)
        self.render_mode = render_mode
        self.single_observation_space = _observation_space(self.oracle)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        n = self.num_envs
        self._keys = np.zeros(n, dtype=np.uint64)
        self._has_key = np.zeros(n, dtype=bool)
        # Initial states drawn ahead: sub-env i's entry j came from counters buf_start[i] + 4 j + (0..3),
        # exactly the draws of the single env's reset number buf_start[i] / 4 + j. Calling the counter RNG
        # once per autoreset would cost more than the physics (about 20 us per call).
        self._buf = np.zeros((n, _BUFFER, 4), dtype=np.float64)
        self._buf_start = np.zeros(n, dtype=np.uint64)
        self._buf_len = np.zeros(n, dtype=np.int64)
        self._ptr = np.zeros(n, dtype=np.int64)
        self._state: npt.NDArray[np.float64] | None = None  # [4, N]: x, x_dot, theta, theta_dot
        self._steps = np.zeros(n, dtype=np.int64)
        self._prev_done = np.zeros(n, dtype=bool)
        self._any_prev_done = False
        self.set_tasks([DEFAULT_TASK if task is None else _check_task(task)] * n)

    # -- meta verbs ---------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None,
                     split: str = "train") -> list[CartPoleTask]:
        """``n`` tasks of ``split`` ("train", "test" or "ood"); ``rng=None`` uses ``self.np_random``."""
        return _sample_tasks(n, self.np_random if rng is None else rng, split)

    def set_tasks(self, tasks: Sequence[CartPoleTask]) -> None:
        """One task per sub-env; the per-env parameter arrays (and derived quantities) are rebuilt."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"set_tasks needs one task per sub-env ({self.num_envs}), got {len(tasks)}")
        for t in tasks:
            _check_task(t)
        self._tasks = tasks
        p = {name: np.array([getattr(t, name) for t in tasks], dtype=np.float64) for name in PARAM_NAMES}
        self.total_mass = p["masscart"] + p["masspole"]
        self.polemass_length = p["masspole"] * p["length"]
        signs = np.array([float(t.action_sign) for t in tasks], dtype=np.float64)
        self.coefficients = coefficients(p["gravity"], p["masscart"], p["masspole"], p["length"],
                                         p["force_mag"], signs)
        self._push_left = -self.coefficients.push_right
        # Oracle observations start as a copy of this (a copy is twice as fast as writing the columns).
        self._obs_template = np.zeros((self.num_envs, 4 + N_ORACLE_FEATURES), dtype=np.float32)
        self._obs_template[:, 4:] = oracle_features(tasks)

    def get_tasks(self) -> list[CartPoleTask]:
        return list(self._tasks)

    # -- gymnasium API ------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        assert self._state is not None
        if self.oracle:
            obs = self._obs_template.copy()
            obs[:, :4] = self._state.T
            return obs
        return np.ascontiguousarray(self._state.T, dtype=np.float32)

    def _refill(self, envs: npt.NDArray[np.intp]) -> None:
        """Draw the next ``_BUFFER`` initial states of sub-envs ``envs``, after those already used."""
        start = self._buf_start[envs] + np.uint64(4) * self._ptr[envs].astype(np.uint64)
        u = counter_rng.uniform(self._keys[envs, None], start[:, None] + _BUFFER_DRAWS)
        self._buf[envs] = (INIT_LOW + (INIT_HIGH - INIT_LOW) * u).reshape(-1, _BUFFER, 4)
        self._buf_start[envs] = start
        self._buf_len[envs] = _BUFFER
        self._ptr[envs] = 0

    def _initial_states(self, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """``[4, len(idx)]`` the next initial states of sub-envs ``idx`` (four counter draws each)."""
        ptr = self._ptr[idx]
        if np.any(ptr >= self._buf_len[idx]):
            # Refill every half-used buffer at once: refills stay rare when envs end at different times.
            self._refill(np.flatnonzero(self._buf_len - self._ptr <= _BUFFER // 2))
            ptr = self._ptr[idx]
        self._ptr[idx] = ptr + 1
        return self._buf[idx, ptr].T

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = counter_rng.batch_seeds(seed, self.num_envs)
        super().reset(seed=seeds[0])
        if options:
            unknown = sorted(set(options) - {"tasks"})
            if unknown:
                hint = (" (the batched env takes 'tasks', a list with one task per sub-env)"
                        if "task" in unknown else "")
                raise ValueError(f"unknown reset option(s) {unknown}; the only option is 'tasks'{hint}")
            if options.get("tasks") is not None:
                self.set_tasks(options["tasks"])
        # Unseeded sub-envs continue their stream (like the single env); a first unseeded reset draws a seed.
        rekeyed = counter_rng.rekey(seeds, self._keys, self._has_key, self.np_random)
        self._buf_start[rekeyed] = 0
        self._buf_len[rekeyed] = 0
        self._ptr[rekeyed] = 0
        self._state = self._initial_states(np.arange(self.num_envs))
        self._steps[:] = 0
        self._prev_done[:] = False
        self._any_prev_done = False
        return self._obs(), {}

    def step(self, actions: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                     dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        # (a >> 1) is nonzero exactly for ints outside {0, 1}: one check instead of two comparisons.
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu" or (a >> 1).any():
            raise ValueError(f"actions must be an int array of shape ({self.num_envs},) with values 0 or 1 "
                             f"(Discrete(2)), got {a.dtype} array of shape {a.shape}: {a!r}")
        c = self.coefficients
        s = self._state
        push = np.where(a, c.push_right, self._push_left)
        x, x_dot, theta, theta_dot = euler_step(s[0], s[1], s[2], s[3], push, c)
        state = np.array((x, x_dot, theta, theta_dot))
        terminated = (np.abs(x) > X_THRESHOLD) | (np.abs(theta) > THETA_THRESHOLD)
        self._steps += 1
        truncated = self._steps >= self.horizon
        rewards = np.ones(self.num_envs, dtype=np.float64)
        if self._any_prev_done:
            # NEXT_STEP autoreset: envs that ended last step restart now; their action is ignored.
            idx = np.flatnonzero(self._prev_done)
            state[:, idx] = self._initial_states(idx)
            self._steps[idx] = 0
            rewards[idx] = 0.0
            terminated[idx] = False
            truncated[idx] = False
        self._state = state
        self._prev_done = terminated | truncated
        self._any_prev_done = bool(self._prev_done.any())
        return self._obs(), rewards, terminated, truncated, {}


def lqr_gains(tasks: Sequence[CartPoleTask], q: Sequence[float] = (1.0, 1.0, 10.0, 1.0), r: float = 0.1,
              iterations: int = 3000) -> npt.NDArray[np.float64]:
    """``[N, 4]`` discrete-time LQR gains ``K`` (force ``u = −K s``) of the tasks' dynamics linearised at
    upright rest and Euler-discretised with τ, from ``iterations`` Riccati iterations batched over tasks.

    Used by :func:`lqr_actions`, a controller that knows the task: the reference that shows every task
    of the documented priors can be balanced for the whole horizon.
    """
    n = len(tasks)
    g = np.array([t.gravity for t in tasks])
    mc = np.array([t.masscart for t in tasks])
    mp = np.array([t.masspole for t in tasks])
    ln = np.array([t.length for t in tasks])
    total = mc + mp
    denom = ln * (4.0 / 3.0 - mp / total)
    a_theta, b_theta = g / denom, -1.0 / (total * denom)  # θ̈ ≈ a_θ θ + b_θ F
    a = np.zeros((n, 4, 4))
    a[:, 0, 1] = a[:, 2, 3] = 1.0
    a[:, 1, 2] = -(mp * ln / total) * a_theta
    a[:, 3, 2] = a_theta
    b = np.zeros((n, 4, 1))
    b[:, 1, 0] = 1.0 / total - (mp * ln / total) * b_theta
    b[:, 3, 0] = b_theta
    ad, bd = np.eye(4) + TAU * a, TAU * b
    qm = np.diag(np.asarray(q, dtype=np.float64))
    p = np.broadcast_to(qm, (n, 4, 4)).copy()
    adt, bdt = ad.transpose(0, 2, 1), bd.transpose(0, 2, 1)
    k = np.zeros((n, 1, 4))
    for _ in range(iterations):
        pa = p @ ad
        k = (bdt @ pa) / (r + bdt @ p @ bd)
        p = qm + adt @ (pa - p @ bd @ k)
    return k[:, 0, :]


def lqr_actions(obs: npt.ArrayLike, gains: npt.NDArray[np.float64],
                tasks: Sequence[CartPoleTask]) -> npt.NDArray[np.int64]:
    """``[N]`` bang-bang actions pushing in the direction of the LQR force ``−K s`` (``obs``: ``[N, >=4]``),
    with each task's action sign undone."""
    s = np.asarray(obs, dtype=np.float64)[:, :4]
    u = -np.einsum("nd,nd->n", gains, s)
    signs = np.array([t.action_sign for t in tasks], dtype=np.float64)
    return (u * signs > 0).astype(np.int64)
