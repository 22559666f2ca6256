"""Custom task families: the TaskFamily builder, TaskSyncVectorEnv, and every error of check_task_family.

Each checker error is provoked by one deliberately broken family; the test asserts the message names
the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl.tasks import (
    DictTask,
    MetaEnv,
    MetaVectorEnv,
    TaskFamily,
    TaskFamilyEnv,
    TaskFamilyError,
    TaskSyncVectorEnv,
    check_task_family,
    sample_split,
    task_split,
)
from metarl.types import Task

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class MassTask(Task):
    family: ClassVar[str] = "test-pendulum-mass"
    mass: float


def sample_mass(rng: np.random.Generator) -> MassTask:
    return MassTask(mass=float(rng.uniform(0.5, 2.0)))


def set_mass(env: gymnasium.Env, task: MassTask) -> None:
    env.unwrapped.m = task.mass  # type: ignore[attr-defined]


def pendulum_family(**kwargs: Any) -> TaskFamily:
    return TaskFamily("Pendulum-v1", sample=sample_mass, set_task=set_mass, **kwargs)


# -- a tiny hand-written meta env: 1-D point, reward -|x - goal| ---------------------------------------

@dataclasses.dataclass(frozen=True)
class GoalTask(Task):
    family: ClassVar[str] = "test-goal"
    goal: float


class GoalEnv(gymnasium.Env):
    """x' = x + 0.1 a; obs [x]; reward -|x' - goal|; x0 ~ U(-0.1, 0.1) from np_random; horizon 10."""

    horizon = 10

    def __init__(self, task: GoalTask | None = None) -> None:
        self.observation_space = gymnasium.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._task = task or GoalTask(0.5)
        self._x = 0.0
        self._t = 0

    def prior(self, rng: np.random.Generator) -> GoalTask:
        return GoalTask(goal=float(rng.uniform(-1.0, 1.0)))

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None, split: str = "train") -> list[Any]:
        return sample_split(self.prior, n, self.np_random if rng is None else rng, split)

    def set_task(self, task: Any) -> None:
        self._task = task

    def get_task(self) -> Any:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._x, self._t = float(self.np_random.uniform(-0.1, 0.1)), 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self._x], dtype=np.float32)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._x += 0.1 * float(np.clip(action, -1.0, 1.0)[0])
        self._t += 1
        return self._obs(), -abs(self._x - self._task.goal), False, self._t >= self.horizon, {}


def test_goal_env_is_a_valid_family() -> None:
    check_task_family(GoalEnv())
    check_task_family(GoalEnv)  # a factory (class) too


# -- builder ------------------------------------------------------------------------------------------

def test_make_gives_a_gymnasium_env_with_meta_verbs() -> None:
    family = pendulum_family()
    env = family.make()
    assert isinstance(env, gymnasium.Env) and isinstance(env, TaskFamilyEnv)
    assert isinstance(env.unwrapped, MetaEnv)
    assert env.horizon == 200  # Pendulum-v1's registered max_episode_steps
    assert env.get_task() == family.default_task() == family.sample_tasks(1, np.random.default_rng(0))[0]
    tasks = env.sample_tasks(3, rng=np.random.default_rng(5))
    assert all(isinstance(t, MassTask) and task_split(t) == "train" for t in tasks)
    env.set_task(tasks[1])
    assert env.get_task() == tasks[1] and env.inner.unwrapped.m == tasks[1].mass
    env.reset(seed=0, options={"task": tasks[2]})
    assert env.get_task() == tasks[2] and env.inner.unwrapped.m == tasks[2].mass
    with pytest.raises(TypeError, match="expects tasks of type MassTask"):
        env.set_task(GoalTask(0.1))
    test = env.sample_tasks(20, rng=np.random.default_rng(0), split="test")
    assert all(task_split(t) == "test" for t in test)
    with pytest.raises(ValueError, match="no out-of-distribution"):
        env.sample_tasks(1, split="ood")


def test_task_changes_dynamics_and_seed_is_reproducible() -> None:
    env = pendulum_family().make()

    def rollout(task: MassTask, seed: int) -> np.ndarray:
        obs, _ = env.reset(seed=seed, options={"task": task})
        out = [obs]
        for _ in range(20):
            out.append(env.step(np.array([1.0], dtype=np.float32))[0])
        return np.array(out)

    light, heavy = MassTask(0.5), MassTask(2.0)
    np.testing.assert_array_equal(rollout(light, 3), rollout(light, 3))
    assert not np.allclose(rollout(light, 3), rollout(heavy, 3))
    # Heavier pole, same torque: smaller angular velocity (obs[2]) after the first step from the same state.
    assert abs(rollout(heavy, 3)[1, 2]) != abs(rollout(light, 3)[1, 2])
    # rng=None samples from np_random, which reset(seed=...) seeds.
    env.reset(seed=11)
    a = env.sample_tasks(3)
    env.reset(seed=11)
    assert env.sample_tasks(3) == a


def test_dict_sampler_gives_dict_tasks() -> None:
    family = TaskFamily("Pendulum-v1", sample=lambda rng: {"mass": np.float32(rng.uniform(0.5, 2.0)), "tag": [1, 2]},
                        set_task=lambda env, task: setattr(env.unwrapped, "m", task.mass))
    env = family.make()
    task = env.sample_tasks(1, rng=np.random.default_rng(0))[0]
    assert isinstance(task, DictTask)
    assert task.mass == task["mass"] and isinstance(task.mass, float) and task.tag == (1, 2)
    assert DictTask.from_json(task.to_json()) == task and hash(task) == hash(DictTask.from_json(task.to_json()))
    env.set_task({"mass": 1.25, "tag": (3,)})
    assert env.get_task() == DictTask.from_mapping({"tag": [3], "mass": 1.25})
    assert env.inner.unwrapped.m == 1.25
    assert repr(DictTask.from_mapping({"b": 1, "a": "x"})) == "DictTask(a='x', b=1)"
    with pytest.raises(TypeError, match="JSON-able"):
        DictTask.from_mapping({"mass": object()})
    with pytest.raises(AttributeError, match="no entry 'length'"):
        _ = task.length
    check_task_family(family)


def test_task_features_flatten_the_numeric_fields_in_order() -> None:
    from metarl.envs.bandit import BanditTask
    from metarl.envs.tabular_mdp import TabularMDPTask

    assert BanditTask(probs=(0.25, 0.5, 1.0)).features() == (0.25, 0.5, 1.0)
    mdp = TabularMDPTask(rewards=((1.0, 2.0),), transitions=(((1.0,), (1.0,)),))  # 1 state, 2 actions
    assert mdp.features() == (1.0, 2.0, 1.0, 1.0)  # mean rewards, then transitions, depth first
    # A dict task: the values in key order (the keys sort "a" < "b"), nested lists flattened, bools as 0/1.
    assert DictTask.from_mapping({"b": [3, [4.5]], "a": True}).features() == (1.0, 3.0, 4.5)
    with pytest.raises(TypeError, match=r"task entry 'tag'\[1\] is a str \('x'\), not a number.*override features"):
        DictTask.from_mapping({"mass": 1.0, "tag": [1, "x"]}).features()

    @dataclasses.dataclass(frozen=True)
    class Named(Task):
        family: ClassVar[str] = "named"
        name: str = "a"

    with pytest.raises(TypeError, match=r"Named.name is a str"):
        Named().features()

    @dataclasses.dataclass(frozen=True)
    class Scaled(Task):
        family: ClassVar[str] = "scaled"
        scale: Any = np.float32(0.5)
        sizes: tuple[Any, ...] = (np.int64(2), 3)

    assert Scaled().features() == (0.5, 2.0, 3.0)  # NumPy scalars are numbers too


def test_ood_split_and_horizon_override() -> None:
    family = pendulum_family(ood_sample=lambda rng: MassTask(float(rng.uniform(3.0, 4.0))), max_episode_steps=5)
    env = family.make()
    assert all(t.mass >= 3.0 for t in env.sample_tasks(4, rng=np.random.default_rng(0), split="ood"))
    assert env.horizon == 5
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


def test_callable_env_and_constructor_errors() -> None:
    family = TaskFamily(lambda: gymnasium.make("Pendulum-v1").unwrapped, sample=sample_mass, set_task=set_mass,
                        max_episode_steps=7)
    env = family.make()
    assert env.horizon == 7
    env.reset(seed=0)
    assert [env.step(env.action_space.sample())[3] for _ in range(7)][-1] is True
    with pytest.raises(TypeError, match="sample must be callable"):
        TaskFamily("Pendulum-v1", sample=None, set_task=set_mass)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registered Gymnasium id"):
        TaskFamily(3, sample=sample_mass, set_task=set_mass)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_episode_steps must be an int >= 1"):
        TaskFamily("Pendulum-v1", sample=sample_mass, set_task=set_mass, max_episode_steps=0)
    with pytest.raises(TypeError, match="must return a metarl.types.Task"):
        TaskFamily("Pendulum-v1", sample=lambda rng: 1.0, set_task=set_mass).make()


def test_register_with_gymnasium_and_env_checkers() -> None:
    pendulum_family().register("metarltest/PendulumMass-v0")
    env = gymnasium.make("metarltest/PendulumMass-v0")
    assert isinstance(env.unwrapped, TaskFamilyEnv)
    env.unwrapped.set_task(MassTask(1.5))
    venv = gymnasium.make_vec("metarltest/PendulumMass-v0", num_envs=3)
    assert isinstance(venv, TaskSyncVectorEnv) and isinstance(venv, MetaVectorEnv) and venv.num_envs == 3
    with pytest.warns(UserWarning, match="symmetric"):  # advice about Pendulum's [-2, 2] torque, not an error
        sb3_check_env(env.unwrapped)
    gymnasium.utils.env_checker.check_env(env.unwrapped, skip_render_check=True)


# -- TaskSyncVectorEnv ----------------------------------------------------------------------------------

def _loop_reference(tasks: list[Any], seed: int, actions: np.ndarray, make: Any) -> tuple[np.ndarray, ...]:
    """SyncVectorEnv's NEXT_STEP autoreset by hand: after a sub-env ends, the next step resets it."""
    envs = [make() for _ in tasks]
    obs = [e.reset(seed=seed + i, options={"task": t})[0] for i, (e, t) in enumerate(zip(envs, tasks, strict=True))]
    done = [False] * len(envs)
    out_o, out_r, out_d = [np.stack(obs)], [], []
    for a in actions:
        o_s, r_s, d_s = [], [], []
        for i, e in enumerate(envs):
            if done[i]:
                o, r, d = e.reset()[0], 0.0, False
            else:
                o, r, term, trunc, _ = e.step(a[i])
                d = term or trunc
            done[i] = d
            o_s.append(o), r_s.append(r), d_s.append(d)
        out_o.append(np.stack(o_s)), out_r.append(r_s), out_d.append(d_s)
    return np.stack(out_o), np.array(out_r), np.array(out_d)


def test_task_sync_vector_env_matches_single_envs_across_autoresets() -> None:
    make = GoalEnv
    venv = TaskSyncVectorEnv(make, num_envs=3)
    assert isinstance(venv, MetaVectorEnv) and venv.horizon == 10
    tasks = venv.sample_tasks(3, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, size=(25, 3, 1)).astype(np.float32)  # 25 steps: two autoresets each
    obs, _ = venv.reset(seed=7, options={"tasks": tasks})
    o_l, r_l, d_l = [obs], [], []
    for a in actions:
        o, r, term, trunc, _ = venv.step(a)
        o_l.append(o), r_l.append(r), d_l.append(term | trunc)
    ref_o, ref_r, ref_d = _loop_reference(tasks, 7, actions, make)
    np.testing.assert_array_equal(np.stack(o_l), ref_o)
    np.testing.assert_array_equal(np.array(r_l), ref_r)
    np.testing.assert_array_equal(np.array(d_l), ref_d)
    assert ref_d.sum() == 6 and venv.get_tasks() == tasks  # tasks survive autoresets


def test_task_sync_vector_env_verbs_and_errors() -> None:
    family = pendulum_family()
    venv = TaskSyncVectorEnv([family.make, family.make])
    tasks = venv.sample_tasks(2, rng=np.random.default_rng(0))
    venv.set_tasks(tasks)
    assert venv.get_tasks() == tasks
    venv.reset(seed=0, options={"tasks": tasks[::-1]})
    assert venv.get_tasks() == tasks[::-1]
    with pytest.raises(ValueError, match="got 1 tasks for num_envs=2"):
        venv.set_tasks(tasks[:1])
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        TaskSyncVectorEnv(family.make)
    with pytest.raises(ValueError, match="num_envs=3 but 2 env functions"):
        TaskSyncVectorEnv([family.make, family.make], num_envs=3)
    with pytest.raises(TaskFamilyError, match="no sample_tasks, set_task, get_task.*TaskFamily"):
        TaskSyncVectorEnv(lambda: gymnasium.make("CartPole-v1"), num_envs=2)
    check_task_family(venv)


# -- check_task_family: one broken family per error -----------------------------------------------------

def test_checker_passes_on_a_family_and_its_twin() -> None:
    check_task_family(pendulum_family())


def test_missing_verbs() -> None:
    with pytest.raises(TaskFamilyError, match=r"CartPoleEnv is not a task family.*sample_tasks, set_task, "
                                              r"get_task.*TaskFamily\("):
        check_task_family(gymnasium.make("CartPole-v1"))

    class NoGet(GoalEnv):
        get_task = None  # type: ignore[assignment]

    with pytest.raises(TaskFamilyError, match=r"has no get_task;"):
        check_task_family(NoGet())


@dataclasses.dataclass
class MutableTask:
    goal: float


@dataclasses.dataclass(frozen=True)
class ListTask(Task):
    family: ClassVar[str] = "test-list"
    goal: list


@dataclasses.dataclass(frozen=True)
class F32Task(Task):
    family: ClassVar[str] = "test-f32"
    goal: Any


def _sampler_env(sample_tasks: Any) -> GoalEnv:
    env = GoalEnv()
    env.sample_tasks = sample_tasks  # type: ignore[method-assign]
    return env


@pytest.mark.parametrize("sample_tasks, message", [
    (lambda n, rng=None, split="train": [GoalTask(float(i)) for i in range(n - 1)], r"returned 3 tasks, expected 4"),
    (lambda n, rng=None, split="train": (GoalTask(float(i)) for i in range(n)), r"must return a list of tasks"),
    (lambda n, rng=None, split="train": [float(i) for i in range(n)], r"is a float, not a metarl.types.Task"),
    (lambda n, rng=None, split="train": [MutableTask(float(i)) for i in range(n)], r"mutable dataclass.*frozen=True"),
    (lambda n, rng=None, split="train": [ListTask([i]) for i in range(n)], r"not hashable \(field\(s\) \['goal'\]"),
    (lambda n, rng=None, split="train": [F32Task(np.float32(i)) for i in range(n)],
     r"cannot be saved as JSON.*\['goal'\].*float\(x\)"),
    (lambda n, rng=None, split="train": [GoalTask(float("nan"))] * n, r"does not survive a JSON round trip"),
    (lambda n, rng=None, split="train": [GoalTask(float(np.random.uniform())) for _ in range(n)],
     r"is not reproducible.*rng argument"),
    (lambda n, rng=None, split="train": [GoalTask(0.5)] * n, r"4 identical tasks"),
    (lambda n, rng=None, split="train": [GoalTask(float(rng.integers(3))) for _ in range(n)],
     r"train and test tasks overlap.*sample_split"),
    (lambda n, rng=None: [GoalTask(float(rng.uniform())) for _ in range(n)],
     r"split='test'\) raised TypeError"),
])
def test_bad_task_sampling(sample_tasks: Any, message: str) -> None:
    with pytest.raises(TaskFamilyError, match=message):
        check_task_family(_sampler_env(sample_tasks))


def test_sampler_returning_wrong_type_through_task_family() -> None:
    family = TaskFamily("Pendulum-v1", sample=lambda rng: sample_mass(rng).mass, set_task=set_mass)
    with pytest.raises(TypeError, match="must return a metarl.types.Task .* got float"):
        check_task_family(family)


def test_get_task_not_returning_set_task() -> None:
    class Forgetful(GoalEnv):
        def get_task(self) -> Any:
            return GoalTask(0.5)

    with pytest.raises(TaskFamilyError, match=r"set_task\(GoalTask\(goal=.*\) then get_task\(\) returned "
                                              r"GoalTask\(goal=0.5\)"):
        check_task_family(Forgetful())


def test_task_without_effect() -> None:
    # A classic bug: setting the attribute on the outer wrapper, which Pendulum never reads.
    family = TaskFamily("Pendulum-v1", sample=sample_mass, set_task=lambda env, task: setattr(env, "m", task.mass))
    with pytest.raises(TaskFamilyError, match=r"the task does not change the env.*on env.unwrapped"):
        check_task_family(family)
    check_task_family(family.make(), require_task_effect=False)


def test_nondeterminism_under_seed() -> None:
    class Noisy(GoalEnv):
        def step(self, action: Any) -> Any:
            obs, r, term, trunc, info = super().step(action)
            return obs, r + float(np.random.normal()), term, trunc, info  # global RNG: not seeded by reset

    with pytest.raises(TaskFamilyError, match=r"not deterministic under a seed.*step 0: reward.*np_random"):
        check_task_family(Noisy())


def test_reset_option_not_honoured() -> None:
    class IgnoresOptions(GoalEnv):
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            return super().reset(seed=seed)

    with pytest.raises(TaskFamilyError, match=r"reset\(options=\{'task': GoalTask.*\}\) did not set the task"):
        check_task_family(IgnoresOptions())


@pytest.mark.parametrize("attr, space, message", [
    ("observation_space", gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2)]),
     r"must be a gymnasium Box or Discrete"),
    ("observation_space", gymnasium.spaces.Box(-1, 1, (1, 1), np.float32), r"flat Box of shape \(d,\).*Flatten"),
    ("action_space", gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32), r"non-finite bounds.*Box\(-1, 1\)"),
    ("observation_space", gymnasium.spaces.Box(-0.05, 0.05, (1,), np.float32),
     r"observation returned by .* is outside the observation space.*entry 0 .*widen the Box"),
])
def test_bad_spaces(attr: str, space: gymnasium.Space, message: str) -> None:
    env = GoalEnv()
    setattr(env, attr, space)
    with pytest.raises(TaskFamilyError, match=message):
        check_task_family(env)


def test_bad_step_results() -> None:
    class FourTuple(GoalEnv):
        def step(self, action: Any) -> Any:
            return super().step(action)[:4]

    class NanReward(GoalEnv):
        def step(self, action: Any) -> Any:
            obs, _, term, trunc, info = super().step(action)
            return obs, float("nan"), term, trunc, info

    with pytest.raises(TaskFamilyError, match=r"must return \(obs, reward, terminated, truncated, info\)"):
        check_task_family(FourTuple())
    with pytest.raises(TaskFamilyError, match=r"reward nan; rewards must be finite"):
        check_task_family(NanReward())


def test_gymnasium_env_checker_failure_is_reported() -> None:
    class NoSuperReset(GoalEnv):
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            if options and "task" in options:
                self.set_task(options["task"])
            self._x, self._t = 0.0, 0  # deterministic, so only gymnasium's seeding check can tell
            return self._obs(), {}

    with pytest.raises(TaskFamilyError, match=r"gymnasium.utils.env_checker.check_env failed.*super\(\).reset"):
        check_task_family(NoSuperReset())


def test_vector_env_checks() -> None:
    with pytest.raises(TaskFamilyError, match=r"SyncVectorEnv has no sample_tasks, set_tasks, get_tasks.*"
                                              r"TaskSyncVectorEnv"):
        check_task_family(gymnasium.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))

    class BadTwin(TaskSyncVectorEnv):
        def __init__(self, num_envs: int) -> None:
            super().__init__(GoalEnv, num_envs)

        def step(self, actions: Any) -> Any:
            obs, r, term, trunc, info = super().step(actions)
            return obs, r + 1e-3, term, trunc, info

    gymnasium.register("metarltest/BadTwin-v0", entry_point=GoalEnv, vector_entry_point=BadTwin)
    with pytest.raises(TaskFamilyError, match=r"batched env disagrees with the single env: sub-env 0.*step 0: reward"):
        check_task_family("metarltest/BadTwin-v0")

    class LaxTwin(TaskSyncVectorEnv):
        def set_tasks(self, tasks: Any) -> None:
            for env, task in zip(self.envs, tasks, strict=False):
                env.unwrapped.set_task(task)

    with pytest.raises(TaskFamilyError, match=r"set_tasks accepted 1 tasks for num_envs=2"):
        check_task_family(LaxTwin(GoalEnv, 2))


def test_checker_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_tasks must be an int >= 1"):
        check_task_family(GoalEnv(), n_tasks=0)
    with pytest.raises(TypeError, match="check_task_family expects"):
        check_task_family(3)
    with pytest.raises(TaskFamilyError, match="returned a int, not a gymnasium.Env"):
        check_task_family(lambda: 3)


def test_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    runpy.run_path(str(ROOT / "examples" / "custom_pendulum.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("return of 50 random steps") == 3
    assert "batched observations: (8, 3)" in out
    assert out.strip().splitlines()[-1].startswith("PendulumTask(mass=")


def test_scripts_train_on_the_example_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metarl.cli import main

    monkeypatch.chdir(ROOT)  # `--env module:Name` imports relative to the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    run = tmp_path / "run"
    assert main(["train", "pretrained", "--env", "examples.custom_pendulum:family", "--out", str(run),
                 "--iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "1", "--eval-every", "1",
                 "--eval-tasks", "2", "--adapt-episodes", "1", "--hidden", "8", "--no-progress"]) == 0
    assert (run / "checkpoint.pt").exists()
