"""The meta-environment contract, train/test task splits, and custom task families.

Meta verbs (the convention shared by learn2learn, garage and ProMP) live on the *unwrapped* env:

- ``sample_tasks(n, rng=None, split="train") -> list[Task]``
- ``set_task(task)`` and ``get_task() -> Task``
- a task may also be passed as ``env.reset(options={"task": task})``.

Batched twins (``gymnasium.vector.VectorEnv``) hold one task per sub-env and add
``set_tasks(tasks)`` / ``get_tasks()``; ``reset(options={"tasks": [...]})`` works too.

Train/test splits
-----------------
Every task belongs to exactly one of the ``train`` and ``test`` splits, decided by a stable hash of
its JSON form (``task_split``): 20% of the prior's mass is ``test``. Sampling a split draws from the
family's prior and keeps only tasks of that split (rejection sampling), so both splits follow the
prior, and no task sampled for training can ever be a test task: "unseen" means unseen. Families
where it makes sense also offer ``split="ood"``, an out-of-distribution prior (documented per family).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from metarl.types import Task, flat_numbers

Split = Literal["train", "test", "ood"]
SPLITS: tuple[str, ...] = ("train", "test", "ood")
TEST_FRACTION = 0.2

TaskT = TypeVar("TaskT", bound=Task)


def task_split(task: Task) -> Literal["train", "test"]:
    """The in-distribution split a task belongs to: a pure function of the task's value."""
    digest = hashlib.blake2b(task.to_json().encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "test" if u < TEST_FRACTION else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def sample_split(
    prior: Callable[[np.random.Generator], TaskT],
    n: int,
    rng: np.random.Generator,
    split: str,
    ood_prior: Callable[[np.random.Generator], TaskT] | None = None,
) -> list[TaskT]:
    """Draw ``n`` tasks of ``split`` from ``prior`` (or from ``ood_prior`` for ``split="ood"``)."""
    check_split(split)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "create one with numpy.random.default_rng(seed)"
        )
    if split == "ood":
        if ood_prior is None:
            raise ValueError("this task family has no out-of-distribution ('ood') split; use 'train' or 'test'")
        return [ood_prior(rng) for _ in range(n)]
    tasks: list[TaskT] = []
    while len(tasks) < n:
        task = prior(rng)
        if task_split(task) == split:
            tasks.append(task)
    return tasks


@runtime_checkable
class MetaEnv(Protocol):
    """What every task-distribution env offers on ``env.unwrapped``."""

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]: ...

    def set_task(self, task: Task) -> None: ...

    def get_task(self) -> Task: ...


@runtime_checkable
class MetaVectorEnv(Protocol):
    """A batched task env: ``num_envs`` sub-envs, each with its own task."""

    num_envs: int

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]: ...

    def set_tasks(self, tasks: Sequence[Task]) -> None: ...

    def get_tasks(self) -> list[Task]: ...


# ------------------------------------------------------------------------------------------------
# Custom task families: the builder, the generic batched twin, and the checker.
#
# A user turns an existing Gymnasium env into a task family with a sampler ``rng -> task`` and a
# setter ``(env, task) -> None`` (``TaskFamily``), or writes an env class with the three meta verbs.
# ``check_task_family`` then reports what is wrong with either before any training starts.
# ------------------------------------------------------------------------------------------------

import copy  # noqa: E402  (this section extends the module; the contract above stays first)
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

import gymnasium  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

META_VERBS: tuple[str, ...] = ("sample_tasks", "set_task", "get_task")
VECTOR_META_VERBS: tuple[str, ...] = ("sample_tasks", "set_tasks", "get_tasks")

TASK_FAMILY_HOWTO = (
    "give its unwrapped env the three meta verbs sample_tasks(n, rng=None, split='train'), set_task(task) "
    "and get_task(), or build it from the plain env with metarl.tasks.TaskFamily, e.g. "
    "TaskFamily('Pendulum-v1', sample=lambda rng: PendulumMass(mass=float(rng.uniform(0.5, 2.0))), "
    "set_task=lambda env, task: setattr(env.unwrapped, 'm', task.mass))"
)


class TaskFamilyError(ValueError):
    """A (custom) task family breaks the meta-env contract; the message says what, which value, and the fix."""


def missing_meta_verbs(env: Any, verbs: Sequence[str] = META_VERBS) -> list[str]:
    """The meta verbs that ``env`` (an env, looked up on ``env.unwrapped``, or an env class) does not offer."""
    target = env if isinstance(env, type) else getattr(env, "unwrapped", env)
    return [v for v in verbs if not callable(getattr(target, v, None))]


def require_meta_verbs(env: Any, what: str | None = None) -> None:
    """Raise :class:`TaskFamilyError` naming the missing verbs and the fix when ``env`` is no task family."""
    missing = missing_meta_verbs(env)
    if missing:
        target = getattr(env, "unwrapped", env)
        name = what or f"the env {type(target).__name__}"
        raise TaskFamilyError(
            f"{name} is not a task family: env.unwrapped has no {', '.join(missing)}; {TASK_FAMILY_HOWTO}"
        )


def _json_value(value: Any, where: str) -> Any:
    """A JSON-able, hashable version of ``value``: numpy scalars -> Python, lists/arrays -> tuples."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v, where) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{where} holds a {type(value).__name__} ({value!r}); task values must be JSON-able: "
        "float, int, str, bool, None, or (nested) lists/tuples of them"
    )


@dataclasses.dataclass(frozen=True)
class DictTask(Task):
    """The task value of a family whose sampler returns plain dicts, e.g. ``{"mass": 1.3}``.

    The dict is stored as sorted ``(key, value)`` pairs (lists become tuples, numpy scalars Python
    numbers), so the task is frozen, hashable and JSON round-trippable like every other task.
    Read values as ``task["mass"]`` or ``task.mass``.
    """

    family: ClassVar[str] = "dict"
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DictTask:
        items = []
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise TypeError(f"task dict keys must be str, got {key!r} ({type(key).__name__})")
            items.append((key, _json_value(value, f"task dict entry {key!r}")))
        return cls(params=tuple(sorted(items)))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def features(self) -> tuple[float, ...]:
        """The entries' values in key order, flattened (:meth:`Task.features`); the keys are not features."""
        return tuple(x for k, v in self.params for x in flat_numbers(v, f"task entry {k!r}"))

    def __getitem__(self, key: str) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(f"{key!r} (this task has {[k for k, _ in self.params]})")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails; never for dunders or the field itself (copy/pickle
        # probe those on half-built instances).
        if name.startswith("__") or name == "params":
            raise AttributeError(name)
        for k, v in self.params:
            if k == name:
                return v
        raise AttributeError(f"DictTask has no entry {name!r}; it has {[k for k, _ in self.params]}")

    def __repr__(self) -> str:
        return "DictTask(" + ", ".join(f"{k}={v!r}" for k, v in self.params) + ")"


def _as_task(value: Any, where: str) -> Task:
    if isinstance(value, Task):
        return value
    if isinstance(value, Mapping):
        return DictTask.from_mapping(value)
    raise TypeError(
        f"{where} must return a metarl.types.Task (a frozen dataclass deriving from Task) or a dict of "
        f"JSON values, got {type(value).__name__}: {value!r}"
    )


class TaskFamily:
    """An existing Gymnasium env turned into a task family by a sampler and a setter.

    Args:
        env: a registered Gymnasium id (``"Pendulum-v1"``, built with ``gymnasium.make``) or a
            function returning a fresh ``gymnasium.Env`` (called with the keyword arguments given to
            :meth:`make`, none by default).
        sample: ``sample(rng) -> task``: one task drawn from the family's prior using only ``rng``
            (a ``numpy.random.Generator``). A task is a frozen dataclass deriving from
            :class:`metarl.types.Task`, or a plain dict of JSON values, which is wrapped into a
            :class:`DictTask` (read it as ``task["mass"]`` or ``task.mass``).
        set_task: ``set_task(env, task) -> None``: make the (inner, possibly wrapped) env run
            ``task``, e.g. ``env.unwrapped.m = task.mass``. It is called on ``set_task`` and again
            before every reset (so an env whose reset re-initialises its parameters still runs the
            task); it must therefore only set values, never draw random numbers.
        ood_sample: optional ``ood_sample(rng) -> task``, the out-of-distribution prior
            (``split="ood"``).
        max_episode_steps: episode horizon; default: the registered ``max_episode_steps`` of the id
            (e.g. 200 for Pendulum-v1), or the inner env's ``horizon`` attribute.
        name: shown in messages; default: the id or the function's name.

    The train/test split of the sampled tasks is :func:`task_split` (rejection sampling through
    :func:`sample_split`), as for the built-in families. Example::

        family = TaskFamily("Pendulum-v1", sample=lambda rng: {"mass": float(rng.uniform(0.5, 2.0))},
                            set_task=lambda env, task: setattr(env.unwrapped, "m", task.mass))
        env = family.make()          # TaskFamilyEnv: a gymnasium.Env with the meta verbs
        venv = family.make_vec(16)   # TaskSyncVectorEnv with set_tasks / get_tasks
    """

    def __init__(
        self,
        env: str | Callable[..., gymnasium.Env],
        sample: Callable[[np.random.Generator], Task | Mapping[str, Any]],
        set_task: Callable[[gymnasium.Env, Any], None],
        *,
        ood_sample: Callable[[np.random.Generator], Task | Mapping[str, Any]] | None = None,
        max_episode_steps: int | None = None,
        name: str | None = None,
    ) -> None:
        if not (isinstance(env, str) or callable(env)):
            raise TypeError(
                f"env must be a registered Gymnasium id (e.g. 'Pendulum-v1') or a function returning a "
                f"gymnasium.Env, got {type(env).__name__}: {env!r}"
            )
        for arg, fn in (("sample", sample), ("set_task", set_task)):
            if not callable(fn):
                raise TypeError(f"{arg} must be callable, got {type(fn).__name__}: {fn!r}")
        if ood_sample is not None and not callable(ood_sample):
            raise TypeError(f"ood_sample must be callable or None, got {type(ood_sample).__name__}")
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be an int >= 1 or None, got {max_episode_steps!r}")
        self.env = env
        self.sample = sample
        self.setter = set_task
        self.ood_sample = ood_sample
        self.max_episode_steps = max_episode_steps
        self.name = name or (env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__))
        self._default_task: Task | None = None

    def __repr__(self) -> str:
        return f"TaskFamily({self.name!r})"

    # -- priors ---------------------------------------------------------------------------------
    def prior(self, rng: np.random.Generator) -> Task:
        return _as_task(self.sample(rng), f"the sample function of {self!r}")

    def ood_prior(self, rng: np.random.Generator) -> Task:
        assert self.ood_sample is not None
        return _as_task(self.ood_sample(rng), f"the ood_sample function of {self!r}")

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        """``n`` tasks of ``split`` drawn with ``rng`` (see :func:`sample_split`)."""
        ood = self.ood_prior if self.ood_sample is not None else None
        return sample_split(self.prior, n, rng, split, ood_prior=ood)

    def default_task(self) -> Task:
        """The task of an env built without one: the first train task drawn with seed 0."""
        if self._default_task is None:
            self._default_task = self.sample_tasks(1, np.random.default_rng(0))[0]
        return self._default_task

    # -- construction ---------------------------------------------------------------------------
    def make_inner(self, **kwargs: Any) -> gymnasium.Env:
        """A fresh plain env (no task applied), built from ``env`` with ``kwargs``."""
        if isinstance(self.env, str):
            extra: dict[str, Any] = {}
            if self.max_episode_steps is not None:
                extra["max_episode_steps"] = self.max_episode_steps
            return gymnasium.make(self.env, **extra, **kwargs)
        inner = self.env(**kwargs)
        if not isinstance(inner, gymnasium.Env):
            raise TypeError(f"the env function of {self!r} must return a gymnasium.Env, got {type(inner).__name__}")
        if self.max_episode_steps is not None:
            inner = gymnasium.wrappers.TimeLimit(inner, self.max_episode_steps)
        return inner

    def make(self, task: Task | Mapping[str, Any] | None = None, **kwargs: Any) -> TaskFamilyEnv:
        """A single :class:`TaskFamilyEnv` running ``task`` (default :meth:`default_task`); ``kwargs``
        (e.g. ``render_mode``) go to the inner env."""
        return TaskFamilyEnv(self, task=task, **kwargs)

    def make_vec(self, num_envs: int, **kwargs: Any) -> TaskSyncVectorEnv:
        """``num_envs`` copies of :meth:`make` in a :class:`TaskSyncVectorEnv` (one task per sub-env)."""
        return TaskSyncVectorEnv(functools.partial(self.make, **kwargs), num_envs)

    def register(self, env_id: str, **kwargs: Any) -> None:
        """Register this family with Gymnasium, so ``gymnasium.make(env_id)`` and
        ``gymnasium.make_vec(env_id, num_envs=n)`` (and the metarl scripts, ``--env env_id``) build it.
        ``kwargs`` are the default keyword arguments of the inner env."""
        gymnasium.register(id=env_id, entry_point=self.make, vector_entry_point=self.make_vec,  # type: ignore[arg-type]
                           kwargs=kwargs)


class TaskFamilyEnv(gymnasium.Env):
    """A task-family env built by :class:`TaskFamily`: owns an inner env and delegates to it.

    Spaces, ``metadata``, ``render_mode``, ``step``, ``render`` and ``close`` are the inner env's.
    The meta verbs live here, so ``env.unwrapped`` has them even under Gymnasium's wrappers.
    ``reset(seed=s)`` seeds this env (``sample_tasks(rng=None)`` draws from its ``np_random``) and
    the inner env with the same ``s``. ``horizon`` is the episode length when known, else ``None``.
    """

    def __init__(self, family: TaskFamily, task: Task | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.family = family
        self.inner = family.make_inner(**kwargs)
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.metadata = dict(self.inner.metadata)
        self.render_mode = self.inner.render_mode
        self.horizon: int | None = self._find_horizon()
        default = family.default_task()
        self._task_type: type[Task] = type(default)
        self._task: Task = default
        self.set_task(default if task is None else task)

    def _find_horizon(self) -> int | None:
        if self.family.max_episode_steps is not None:
            return self.family.max_episode_steps
        spec = getattr(self.inner, "spec", None)
        if spec is not None and spec.max_episode_steps:
            return int(spec.max_episode_steps)
        h = getattr(self.inner.unwrapped, "horizon", None)
        return int(h) if isinstance(h, (int, np.integer)) and h > 0 else None

    # -- meta verbs -------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
        return self.family.sample_tasks(n, self.np_random if rng is None else rng, split)

    def set_task(self, task: Task | Mapping[str, Any]) -> None:
        if isinstance(task, Mapping) and not isinstance(task, Task):
            task = DictTask.from_mapping(task)
        if not isinstance(task, self._task_type):
            raise TypeError(
                f"{self.family!r} expects tasks of type {self._task_type.__name__} (what its sampler returns), "
                f"got {type(task).__name__}: {task!r}; use env.unwrapped.sample_tasks(...) to get tasks"
            )
        self.family.setter(self.inner, task)
        self._task = task

    def get_task(self) -> Task:
        return self._task

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "task" in options:
            self.set_task(options.pop("task"))
        else:
            self.family.setter(self.inner, self._task)
        return self.inner.reset(seed=seed, options=options or None)

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        return self.inner.step(action)

    def render(self) -> Any:
        return self.inner.render()

    def close(self) -> None:
        self.inner.close()
        super().close()


class TaskSyncVectorEnv(gymnasium.vector.SyncVectorEnv):
    """A batched task env for any meta env without a fast twin: a ``SyncVectorEnv`` of sub-envs
    that each hold one task, plus ``set_tasks`` / ``get_tasks`` / ``sample_tasks`` and
    ``reset(options={"tasks": [...]})``. Sub-envs keep their task across autoresets.

    Args:
        env_fns: a list of functions each returning one meta env, or a single such function
            (then ``num_envs`` copies are made).
        num_envs: number of sub-envs; required with a single function.
        **kwargs: passed to ``gymnasium.vector.SyncVectorEnv`` (e.g. ``autoreset_mode``).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gymnasium.Env]] | Callable[[], gymnasium.Env],
        num_envs: int | None = None,
        **kwargs: Any,
    ) -> None:
        if callable(env_fns):
            if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
                raise ValueError(f"num_envs must be an int >= 1 with a single env function, got {num_envs!r}")
            fns = [env_fns] * int(num_envs)
        else:
            fns = list(env_fns)
            if num_envs is not None and num_envs != len(fns):
                raise ValueError(f"num_envs={num_envs} but {len(fns)} env functions were given; pass one of them")
        super().__init__(fns, **kwargs)
        for i, env in enumerate(self.envs):
            require_meta_verbs(env, f"sub-env {i} ({type(env.unwrapped).__name__}) of TaskSyncVectorEnv")
        first = self.envs[0]
        h = getattr(first.unwrapped, "horizon", None)
        spec = getattr(first, "spec", None)
        if not (isinstance(h, (int, np.integer)) and h > 0) and spec is not None and spec.max_episode_steps:
            h = spec.max_episode_steps
        self.horizon: int | None = int(h) if isinstance(h, (int, np.integer)) and h > 0 else None

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Task]:
        return list(self.envs[0].unwrapped.sample_tasks(n, rng=rng, split=split))  # type: ignore[attr-defined]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(
                f"set_tasks needs one task per sub-env: got {len(tasks)} tasks for num_envs={self.num_envs}; "
                "repeat tasks to fill the batch (e.g. metarl.rollout.repeat_tasks)"
            )
        for env, task in zip(self.envs, tasks, strict=True):
            env.unwrapped.set_task(task)  # type: ignore[attr-defined]

    def get_tasks(self) -> list[Task]:
        return [env.unwrapped.get_task() for env in self.envs]  # type: ignore[attr-defined]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        options = dict(options) if options is not None else None
        if options is not None and "tasks" in options:
            self.set_tasks(options.pop("tasks"))
        return super().reset(seed=seed, options=options or None)


# -- checker ------------------------------------------------------------------------------------

def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a user callback; turn any exception into a TaskFamilyError that says which call failed."""
    try:
        return fn()
    except TaskFamilyError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TaskFamilyError(f"{what} raised {type(e).__name__}: {e}") from e


def _check_space(space: gymnasium.Space, kind: str) -> None:
    fix = (" (flatten it, e.g. gymnasium.wrappers.FlattenObservation)" if kind == "observation"
           else " (metarl policies act in one flat Box or one Discrete)")
    if isinstance(space, gymnasium.spaces.Discrete):
        return
    if not isinstance(space, gymnasium.spaces.Box):
        raise TaskFamilyError(f"the {kind} space must be a gymnasium Box or Discrete, got {space}{fix}")
    if len(space.shape) != 1:
        raise TaskFamilyError(f"the {kind} space must be a flat Box of shape (d,), got shape {space.shape}{fix}")
    if kind == "action":
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise TaskFamilyError(
                f"the action space {space} has non-finite bounds (low={space.low}, high={space.high}); Gaussian "
                "policies are clipped to the bounds, so give finite ones (e.g. Box(-1, 1))"
            )
        if not np.issubdtype(space.dtype, np.floating):
            raise TaskFamilyError(f"a Box action space must have a float dtype, got {space.dtype}")


def _check_obs(obs: Any, space: gymnasium.Space, where: str) -> None:
    if space.contains(obs):
        return
    detail = ""
    if isinstance(space, gymnasium.spaces.Box):
        arr = np.asarray(obs)
        if arr.shape != space.shape:
            detail = f": shape {arr.shape}, expected {space.shape}"
        elif not np.can_cast(arr.dtype, space.dtype):
            detail = f": dtype {arr.dtype}, expected {space.dtype} (cast it, e.g. obs.astype(np.float32))"
        else:
            bad = np.flatnonzero(~np.isfinite(arr) | (arr < space.low) | (arr > space.high))
            if bad.size:
                i = int(bad[0])
                detail = (f": entry {i} is {float(arr[i]):g}, outside [{float(space.low[i]):g}, "
                          f"{float(space.high[i]):g}] "
                          "(widen the Box bounds or clip the observation)")
    raise TaskFamilyError(f"the observation returned by {where} is outside the observation space {space}"
                          f"{detail}; value {_short(obs)}")


Transition = tuple[Any, float, bool, bool]


def _rollout(env: gymnasium.Env, seed: int, actions: Sequence[Any], options: dict[str, Any] | None,
             task_text: str) -> list[Transition]:
    """Reset with ``seed`` (and ``options``), then apply ``actions`` (resetting unseeded after an episode
    ends). Returns (obs, reward, terminated, truncated) per step, index 0 being the reset."""
    out = _call(f"env.reset(seed={seed}, options={_short(options)})", lambda: env.reset(seed=seed, options=options))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TaskFamilyError(f"env.reset(...) must return (obs, info), got {_short(out)}")
    obs = out[0]
    _check_obs(obs, env.observation_space, f"reset(seed={seed}) with task {task_text}")
    traj: list[Transition] = [(copy.deepcopy(obs), 0.0, False, False)]
    for t, action in enumerate(actions):
        res = _call(f"env.step({_short(action)}) at step {t}", functools.partial(env.step, action))
        if not (isinstance(res, tuple) and len(res) == 5):
            raise TaskFamilyError(
                f"env.step(action) must return (obs, reward, terminated, truncated, info), got {_short(res)}"
            )
        obs, reward, terminated, truncated, _ = res
        _check_obs(obs, env.observation_space, f"step {t} with task {task_text}")
        if np.ndim(reward) != 0 or not np.isfinite(float(reward)):
            raise TaskFamilyError(f"step {t} with task {task_text} returned reward {_short(reward)}; "
                                  "rewards must be finite scalars")
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TaskFamilyError(f"step {t} returned {name}={_short(flag)} ({type(flag).__name__}); "
                                      "it must be a bool")
        traj.append((copy.deepcopy(obs), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs = _call("env.reset() after an episode ended", lambda: env.reset())[0]
            _check_obs(obs, env.observation_space, f"reset() after step {t} with task {task_text}")
    return traj


def _first_difference(a: list[Transition], b: list[Transition], rtol: float = 0.0,
                      atol: float = 0.0) -> str | None:
    """``None`` if the trajectories agree, else a description of the first step where they differ."""
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        where = "the reset observation" if t == 0 else f"step {t - 1}"
        ox, oy = np.asarray(x[0], dtype=np.float64), np.asarray(y[0], dtype=np.float64)
        if ox.shape != oy.shape or not np.allclose(ox, oy, rtol=rtol, atol=atol):
            return f"{where}: observation {_short(x[0])} vs {_short(y[0])}"
        if not np.isclose(x[1], y[1], rtol=rtol, atol=atol):
            return f"{where}: reward {x[1]!r} vs {y[1]!r}"
        if x[2:] != y[2:]:
            return f"{where}: (terminated, truncated) {x[2:]} vs {y[2:]}"
    return None


def _check_task_values(tasks: Any, n: int, call: str) -> list[Task]:
    if not isinstance(tasks, (list, tuple)):
        raise TaskFamilyError(f"{call} must return a list of tasks, got {type(tasks).__name__}: {_short(tasks)}")
    if len(tasks) != n:
        raise TaskFamilyError(f"{call} returned {len(tasks)} tasks, expected {n}; return exactly n tasks "
                              "(metarl.tasks.sample_split(prior, n, rng, split) does)")
    for i, task in enumerate(tasks):
        what = f"task {i} from {call} ({_short(task)})"
        if dataclasses.is_dataclass(task) and not type(task).__dataclass_params__.frozen:  # type: ignore[union-attr]
            raise TaskFamilyError(f"{what} is a mutable dataclass; tasks must be immutable: declare it as "
                                  "@dataclass(frozen=True) class MyTask(metarl.types.Task)")
        if not isinstance(task, Task):
            raise TaskFamilyError(f"{what} is a {type(task).__name__}, not a metarl.types.Task; define "
                                  "@dataclass(frozen=True) class MyTask(Task) with JSON-able fields "
                                  "(or return dicts from a TaskFamily sampler)")
        try:
            hash(task)
        except TypeError as e:
            fields = [f.name for f in dataclasses.fields(task) if not _hashable(getattr(task, f.name))]
            raise TaskFamilyError(f"{what} is not hashable (field(s) {fields} hold lists, arrays or dicts); "
                                  "store tuples of floats/ints/strs instead") from e
        try:
            text = task.to_json()
            back = type(task).from_json(text)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            fields = [f.name for f in dataclasses.fields(task) if not _jsonable(getattr(task, f.name))]
            raise TaskFamilyError(f"{what} cannot be saved as JSON ({type(e).__name__}: {e}); field(s) {fields} "
                                  "must hold Python floats/ints/strs/tuples (convert numpy values with float(x) "
                                  "or tuple(arr.tolist()))") from e
        if back != task:
            raise TaskFamilyError(f"{what} does not survive a JSON round trip: it came back as {_short(back)}; "
                                  "store Python floats/ints/strs and tuples only")
    return list(tasks)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_single(env: gymnasium.Env, n_tasks: int, seed: int, n_steps: int, require_task_effect: bool) -> None:
    require_meta_verbs(env)
    u: Any = env.unwrapped
    _check_space(env.observation_space, "observation")
    _check_space(env.action_space, "action")

    call = f"sample_tasks({n_tasks}, rng=numpy.random.default_rng({seed}))"
    tasks = _check_task_values(
        _call(call, lambda: u.sample_tasks(n_tasks, rng=np.random.default_rng(seed))), n_tasks, call)
    again = _call(call, lambda: u.sample_tasks(n_tasks, rng=np.random.default_rng(seed)))
    if list(again) != tasks:
        raise TaskFamilyError(
            f"{call} is not reproducible: it gave {_short(tasks)} and then {_short(list(again))}; draw every "
            "random number of a task from the rng argument (never numpy.random.*, random.* or the env's state)")
    distinct = list(dict.fromkeys(tasks))
    if n_tasks >= 2 and len(distinct) < 2:
        raise TaskFamilyError(f"{call} returned {n_tasks} identical tasks {_short(tasks[0])}: the task prior "
                              "does not vary; sample the task parameters from rng")
    test_call = f"sample_tasks({n_tasks}, rng=numpy.random.default_rng({seed + 1}), split='test')"
    test = _check_task_values(
        _call(test_call, lambda: u.sample_tasks(n_tasks, rng=np.random.default_rng(seed + 1), split="test")),
        n_tasks, test_call)
    overlap = set(tasks) & set(test)
    if overlap:
        raise TaskFamilyError(f"train and test tasks overlap ({_short(next(iter(overlap)))} is in both); "
                              "split tasks with metarl.tasks.sample_split(prior, n, rng, split)")

    for task in distinct:
        _call(f"set_task({_short(task)})", functools.partial(u.set_task, task))
        got = _call("get_task()", u.get_task)
        if got != task:
            raise TaskFamilyError(f"set_task({_short(task)}) then get_task() returned {_short(got)}; get_task "
                                  "must return the task last set")

    space = copy.deepcopy(env.action_space)
    space.seed(seed)
    actions = [space.sample() for _ in range(n_steps)]

    def run(task: Task, via_options: bool) -> list[Transition]:
        if via_options:
            other = distinct[1] if len(distinct) > 1 and distinct[0] == task else distinct[0]
            _call(f"set_task({_short(other)})", lambda: u.set_task(other))
            traj = _rollout(env, seed, actions, {"task": task}, _short(task))
            got = u.get_task()
            if got != task:
                raise TaskFamilyError(f"reset(options={{'task': {_short(task)}}}) did not set the task (get_task() "
                                      f"returned {_short(got)}); in reset, call self.set_task(options['task']) "
                                      "first")
            return traj
        _call(f"set_task({_short(task)})", lambda: u.set_task(task))
        return _rollout(env, seed, actions, None, _short(task))

    t0 = distinct[0]
    first = run(t0, via_options=False)
    second = run(t0, via_options=False)
    diff = _first_difference(first, second)
    if diff is not None:
        raise TaskFamilyError(
            f"the env is not deterministic under a seed: task {_short(t0)}, reset(seed={seed}) and the same "
            f"actions gave different transitions at {diff}; take all randomness from self.np_random (seeded by "
            "super().reset(seed=seed)) or metarl.rng, never from global random state")
    diff = _first_difference(first, run(t0, via_options=True))
    if diff is not None:
        raise TaskFamilyError(
            f"reset(options={{'task': {_short(t0)}}}) is not honoured: it runs differently from set_task(task) "
            f"followed by reset() (first difference at {diff}); in reset, call self.set_task(options['task']) "
            "before resetting the state")

    if require_task_effect and len(distinct) >= 2:
        trajs = [first] + [run(t, via_options=False) for t in distinct[1:]]
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                if _first_difference(trajs[i], trajs[j]) is None:
                    raise TaskFamilyError(
                        f"the task does not change the env: tasks {_short(distinct[i])} and {_short(distinct[j])} "
                        f"give identical observations and rewards over {n_steps} steps for seed {seed} and the "
                        "same actions. Does set_task write an attribute the env reads (on env.unwrapped, not on "
                        "a wrapper)? If tasks only differ in states random actions rarely reach, raise n_steps "
                        "or pass require_task_effect=False")

    try:
        check_env(u, skip_render_check=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TaskFamilyError(f"gymnasium.utils.env_checker.check_env failed on {type(u).__name__}: "
                              f"{type(e).__name__}: {e}") from e


def _check_vector(venv: gymnasium.vector.VectorEnv, seed: int, n_steps: int,
                  make_single: Callable[[], gymnasium.Env] | None) -> None:
    missing = [v for v in VECTOR_META_VERBS if not callable(getattr(venv, v, None))]
    if missing:
        raise TaskFamilyError(f"the vector env {type(venv).__name__} has no {', '.join(missing)}; wrap the single "
                              "meta env in metarl.tasks.TaskSyncVectorEnv(make_env, num_envs)")
    n = venv.num_envs
    call = f"vector sample_tasks({n}, rng=numpy.random.default_rng({seed}))"
    sample = venv.sample_tasks  # type: ignore[attr-defined]
    tasks = _check_task_values(_call(call, lambda: sample(n, rng=np.random.default_rng(seed))), n, call)
    _call("set_tasks(tasks)", lambda: venv.set_tasks(tasks))  # type: ignore[attr-defined]
    got = _call("get_tasks()", venv.get_tasks)  # type: ignore[attr-defined]
    if list(got) != tasks:
        raise TaskFamilyError(f"set_tasks({_short(tasks)}) then get_tasks() returned {_short(got)}")
    if n >= 2:
        try:
            venv.set_tasks(tasks[:-1])  # type: ignore[attr-defined]
        except (ValueError, TypeError):
            pass
        else:
            raise TaskFamilyError(f"set_tasks accepted {n - 1} tasks for num_envs={n}; it must raise ValueError "
                                  "when the count is wrong")
    reordered = tasks[::-1]
    _call("reset(options={'tasks': ...})", lambda: venv.reset(seed=seed, options={"tasks": reordered}))
    if list(venv.get_tasks()) != reordered:  # type: ignore[attr-defined]
        raise TaskFamilyError("reset(options={'tasks': tasks}) did not set the tasks; in reset, call "
                              "self.set_tasks(options['tasks']) first")

    space = copy.deepcopy(venv.single_action_space)
    space.seed(seed)
    actions = [[space.sample() for _ in range(n)] for _ in range(n_steps)]

    def run() -> list[tuple[Any, Any, Any, Any]]:
        obs, _ = venv.reset(seed=seed, options={"tasks": tasks})
        steps = [(np.array(obs), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool))]
        for t, a in enumerate(actions):
            obs, r, term, trunc, _ = _call(f"vector step {t}", functools.partial(venv.step, np.stack(a)))
            if not venv.observation_space.contains(obs):
                raise TaskFamilyError(f"the vector env's observation at step {t} is outside its observation space "
                                      f"{venv.observation_space}: {_short(obs)}")
            steps.append((np.array(obs), np.asarray(r, dtype=np.float64), np.asarray(term), np.asarray(trunc)))
        return steps

    a, b = run(), run()
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        if not all(np.array_equal(p, q) for p, q in zip(x, y, strict=True)):
            raise TaskFamilyError(f"the vector env is not deterministic under a seed: reset(seed={seed}) with the "
                                  f"same tasks and actions differs at step {t - 1}; take in-episode randomness "
                                  "from metarl.rng keys seeded by reset")
    if make_single is None:
        return
    single = make_single()
    try:
        for i in range(min(n, 2)):
            traj = _rollout(single, seed + i, [act[i] for act in actions], {"task": tasks[i]}, _short(tasks[i]))
            vec = [(a[0][0][i], 0.0, False, False)]
            for t in range(1, len(a)):
                vec.append((a[t][0][i], float(a[t][1][i]), bool(a[t][2][i]), bool(a[t][3][i])))
                if vec[-1][2] or vec[-1][3]:
                    break
            diff = _first_difference(traj[: len(vec)], vec, rtol=1e-5, atol=1e-6)
            if diff is not None:
                raise TaskFamilyError(
                    f"the batched env disagrees with the single env: sub-env {i} (task {_short(tasks[i])}, seed "
                    f"{seed + i}) vs the single env with the same task, seed and actions, at {diff}")
    finally:
        single.close()


def check_task_family(
    env: Any,
    n_tasks: int = 4,
    seed: int = 0,
    n_steps: int = 50,
    *,
    require_task_effect: bool = True,
    num_envs: int = 2,
) -> None:
    """Check that ``env`` is a working task family; raise :class:`TaskFamilyError` saying what is wrong.

    ``env`` may be a ``gymnasium.Env`` (its task is changed and it is reset), a :class:`TaskFamily`,
    an env spec string (anything :func:`metarl.registry.make_env` accepts), a function or class
    returning an env, or a batched task env (``gymnasium.vector.VectorEnv`` with ``set_tasks``).
    For a spec string or a TaskFamily the batched twin (``num_envs`` sub-envs) is checked too,
    including that it reproduces the single env's transitions.

    Checks, in order: the meta verbs exist; the spaces are a flat Box or Discrete (actions with
    finite bounds); ``sample_tasks`` returns ``n_tasks`` frozen, hashable, JSON round-trippable
    :class:`~metarl.types.Task` values, reproducibly from its ``rng``, not all equal, with disjoint
    train and test samples; ``set_task`` then ``get_task`` returns the task; observations lie in
    the observation space and rewards are finite; the same task, seed and actions give the same
    transitions; ``reset(options={"task": t})`` runs ``t``; different tasks give different
    transitions (``require_task_effect``); and ``gymnasium.utils.env_checker.check_env`` passes.
    """
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be an int >= 1, got {n_tasks!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    make_single: Callable[[], gymnasium.Env] | None = None
    make_vector: Callable[[], gymnasium.vector.VectorEnv] | None = None
    if isinstance(env, str):
        from metarl.registry import make_env, make_vector_env

        spec = env
        make_single = functools.partial(make_env, spec)
        make_vector = functools.partial(make_vector_env, spec, num_envs)
    elif isinstance(env, TaskFamily):
        make_single, make_vector = env.make, functools.partial(env.make_vec, num_envs)
    elif isinstance(env, gymnasium.vector.VectorEnv):
        _check_vector(env, seed, n_steps, None)
        return
    elif isinstance(env, gymnasium.Env):
        _check_single(env, n_tasks, seed, n_steps, require_task_effect)
        return
    elif callable(env):
        made = _call(f"the env factory {getattr(env, '__name__', env)!r}()", env)
        if isinstance(made, (TaskFamily, gymnasium.vector.VectorEnv)):
            check_task_family(made, n_tasks, seed, n_steps, require_task_effect=require_task_effect,
                              num_envs=num_envs)
            return
        if not isinstance(made, gymnasium.Env):
            raise TaskFamilyError(f"the env factory {env!r} returned a {type(made).__name__}, not a gymnasium.Env")
        try:
            _check_single(made, n_tasks, seed, n_steps, require_task_effect)
        finally:
            made.close()
        return
    else:
        raise TypeError(f"check_task_family expects an env, a TaskFamily, an env spec string or an env factory, "
                        f"got {type(env).__name__}: {_short(env)}")

    single = make_single()
    try:
        _check_single(single, n_tasks, seed, n_steps, require_task_effect)
    finally:
        single.close()
    venv = make_vector()
    try:
        _check_vector(venv, seed, n_steps, make_single)
    finally:
        venv.close()
