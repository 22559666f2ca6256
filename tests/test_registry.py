"""Env spec resolution (registered ids and ``module:Name``), did-you-mean, and error messages."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from metarl.registry import EnvSpecError, make_env, make_vector_env, resolve_env, task_family_ids
from metarl.tasks import MetaEnv, MetaVectorEnv, TaskFamilyEnv, TaskSyncVectorEnv

USER_MODULE = "metarl_user_envs_for_tests"
USER_CODE = textwrap.dedent('''
    """A user's module: a TaskFamily, a meta Env class, its fast twin, factories, and non-envs."""
    import dataclasses
    from typing import ClassVar

    import gymnasium
    import numpy as np

    from metarl.tasks import TaskFamily, TaskSyncVectorEnv, sample_split
    from metarl.types import Task


    @dataclasses.dataclass(frozen=True)
    class MassTask(Task):
        family: ClassVar[str] = "user-mass"
        mass: float


    def _sample(rng):
        return MassTask(float(rng.uniform(0.5, 2.0)))


    family = TaskFamily("Pendulum-v1", sample=_sample, set_task=lambda env, t: setattr(env.unwrapped, "m", t.mass))


    class ChainEnv(gymnasium.Env):
        """Discrete chain with a task-dependent rewarding state."""

        horizon = 8

        def __init__(self, n_states=4):
            self.observation_space = gymnasium.spaces.Discrete(n_states)
            self.action_space = gymnasium.spaces.Discrete(2)
            self.n_states = n_states
            self._task = MassTask(1.0)
            self._s = self._t = 0

        def sample_tasks(self, n, rng=None, split="train"):
            return sample_split(_sample, n, self.np_random if rng is None else rng, split)

        def set_task(self, task):
            self._task = task

        def get_task(self):
            return self._task

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            if options and "task" in options:
                self.set_task(options["task"])
            self._s, self._t = 0, 0
            return self._s, {}

        def step(self, action):
            self._s = int(np.clip(self._s + (1 if action == 1 else -1), 0, self.n_states - 1))
            self._t += 1
            return self._s, float(self._s == self.n_states - 1) * self._task.mass, False, self._t >= self.horizon, {}


    class ChainVectorEnv(TaskSyncVectorEnv):
        """Stands in for a fast batched twin registered as the vector_entry_point."""

        def __init__(self, num_envs, **kwargs):
            super().__init__(lambda: ChainEnv(**kwargs), num_envs)


    def make_chain(n_states=4):
        return ChainEnv(n_states=n_states)


    def make_family():
        return family


    def make_number():
        return 3


    class NotAnEnv:
        pass


    def make_plain():
        return gymnasium.make("CartPole-v1")


    env_instance = ChainEnv()
    settings = {"a": 1}
    families = type("NS", (), {"pendulum": family})
''')


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{USER_MODULE}.py").write_text(USER_CODE)
    sys.path.insert(0, str(folder))
    gymnasium.register("metarltest/Chain-v0", entry_point=f"{USER_MODULE}:ChainEnv",
                       vector_entry_point=f"{USER_MODULE}:ChainVectorEnv")
    gymnasium.register("metarltest/ChainNoVec-v0", entry_point=f"{USER_MODULE}:make_chain")
    yield USER_MODULE
    sys.path.remove(str(folder))


def test_builtin_ids_are_known() -> None:
    assert set(task_family_ids()) >= {"metarl/Navigation2D-v0", "metarl/CartPoleDynamics-v0", "metarl/Bandit-v0",
                                      "metarl/TabularMDP-v0"}
    info = resolve_env("metarl/Navigation2D-v0")
    assert info.kind == "id" and info.vector_id == "metarl/Navigation2D-v0"


def test_registered_id_with_and_without_vector_entry_point(user_module: str) -> None:
    env = make_env("metarltest/Chain-v0", n_states=5)
    assert isinstance(env.unwrapped, MetaEnv) and env.observation_space.n == 5
    venv = make_vector_env("metarltest/Chain-v0", 3, n_states=5)
    assert type(venv).__name__ == "ChainVectorEnv" and venv.single_observation_space.n == 5
    fallback = make_vector_env("metarltest/ChainNoVec-v0", 3)
    assert type(fallback) is TaskSyncVectorEnv and isinstance(fallback, MetaVectorEnv) and fallback.num_envs == 3
    tasks = fallback.sample_tasks(3, rng=np.random.default_rng(0))
    fallback.reset(seed=0, options={"tasks": tasks})
    assert fallback.get_tasks() == tasks


def test_module_family(user_module: str) -> None:
    info = resolve_env(f"{user_module}:family")
    assert info.kind == "family"
    env = make_env(f"{user_module}:family")
    assert isinstance(env, TaskFamilyEnv) and env.horizon == 200
    venv = make_vector_env(f"{user_module}:family", 4)
    assert isinstance(venv, TaskSyncVectorEnv) and venv.num_envs == 4
    assert isinstance(make_env(f"{user_module}:families.pendulum"), TaskFamilyEnv)  # dotted attribute path


def test_module_class_uses_the_registered_fast_twin(user_module: str) -> None:
    info = resolve_env(f"{user_module}:ChainEnv")
    assert info.kind == "class" and info.vector_id == "metarltest/Chain-v0"
    env = make_env(f"{user_module}:ChainEnv", n_states=6)
    assert type(env).__name__ == "ChainEnv" and env.observation_space.n == 6
    assert type(make_vector_env(f"{user_module}:ChainEnv", 2)).__name__ == "ChainVectorEnv"


def test_module_factories(user_module: str) -> None:
    env = make_env(f"{user_module}:make_chain", n_states=7)
    assert env.observation_space.n == 7
    venv = make_vector_env(f"{user_module}:make_chain", 3, n_states=7)
    assert isinstance(venv, TaskSyncVectorEnv) and venv.num_envs == 3 and venv.single_observation_space.n == 7
    assert len({id(e) for e in venv.envs}) == 3
    assert isinstance(make_env(f"{user_module}:make_family"), TaskFamilyEnv)
    assert isinstance(make_vector_env(f"{user_module}:make_family", 2), TaskSyncVectorEnv)


def test_gymnasium_module_id_form(user_module: str) -> None:
    # Gymnasium's own "module:EnvId": the module has no such attribute, but the id is registered.
    assert resolve_env(f"{user_module}:metarltest/Chain-v0").kind == "id"


def test_import_relative_to_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_pkg").mkdir()
    (tmp_path / "cwd_pkg" / "fams.py").write_text(
        "from metarl.tasks import TaskFamily\n"
        "family = TaskFamily('Pendulum-v1', sample=lambda rng: {'mass': float(rng.uniform(0.5, 2))},\n"
        "                    set_task=lambda env, t: setattr(env.unwrapped, 'm', t.mass))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    env = make_env("cwd_pkg.fams:family")
    assert isinstance(env, TaskFamilyEnv) and str(tmp_path) in sys.path


@pytest.mark.parametrize("spec, guess", [
    ("metarl/Navigaton2D-v0", "metarl/Navigation2D-v0"),
    ("Navigation2D-v0", "metarl/Navigation2D-v0"),
    ("metarl/navigation2d-v1", "metarl/Navigation2D-v0"),
    ("metarl/Bandits-v0", "metarl/Bandit-v0"),
    ("CartPol-v1", "CartPole-v1"),
])
def test_unknown_id_did_you_mean(spec: str, guess: str) -> None:
    with pytest.raises(EnvSpecError, match=rf"unknown env '{spec}' \(did you mean '{guess}'\?\).*package.module:Name"):
        make_env(spec)


def test_unknown_id_without_close_match_lists_families() -> None:
    with pytest.raises(ValueError, match=r"unknown env 'qqqqzzzz'; the built-in task families are \['metarl/"):
        make_env("qqqqzzzz")


def test_registered_env_that_is_not_a_task_family(user_module: str) -> None:
    with pytest.raises(EnvSpecError, match=r"'CartPole-v1' is not a task family: its env CartPoleEnv has no "
                                           r"sample_tasks, set_task, get_task.*TaskFamily\('Pendulum-v1'"):
        make_env("CartPole-v1")
    with pytest.raises(EnvSpecError, match="not a task family"):
        make_vector_env("CartPole-v1", 2)
    with pytest.raises(EnvSpecError, match=r"make_plain' is not a task family: its env CartPoleEnv"):
        make_env(f"{user_module}:make_plain")


def test_bad_module_path() -> None:
    with pytest.raises(EnvSpecError, match=r"cannot import module 'no_such_pkg.fams' of env spec "
                                           r"'no_such_pkg.fams:family': No module named 'no_such_pkg'"):
        make_env("no_such_pkg.fams:family")


def test_module_whose_import_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_user_mod.py").write_text("import not_installed_dependency_xyz\n")
    (tmp_path / "raising_user_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EnvSpecError, match=r"importing module 'broken_user_mod' .* failed: No module named "
                                           r"'not_installed_dependency_xyz'"):
        make_env("broken_user_mod:family")
    with pytest.raises(EnvSpecError, match=r"importing module 'raising_user_mod' .* RuntimeError: boom at import"):
        make_env("raising_user_mod:family")


def test_missing_name_lists_the_module(user_module: str) -> None:
    with pytest.raises(EnvSpecError, match=r"has no 'familly' \(did you mean 'family'\?\).*it defines: .*"
                                           r"ChainEnv \(Env class\).*family \(TaskFamily\).*make_chain \(function\)"):
        make_env(f"{user_module}:familly")


@pytest.mark.parametrize("name, message", [
    ("env_instance", r"is an env instance \(ChainEnv\).*its class"),
    ("NotAnEnv", r"is a class but not a gymnasium.Env subclass"),
    ("settings", r"is a dict, not a TaskFamily"),
    ("make_number", r"returned a int, not a gymnasium.Env or a TaskFamily"),
])
def test_module_objects_that_are_not_families(user_module: str, name: str, message: str) -> None:
    with pytest.raises(EnvSpecError, match=message):
        make_env(f"{user_module}:{name}")


def test_spec_argument_errors() -> None:
    with pytest.raises(EnvSpecError, match="non-empty string"):
        make_env("")
    with pytest.raises(EnvSpecError, match="must look like 'package.module:Name'"):
        make_env("metarl.tasks:")
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        make_vector_env("metarl/Navigation2D-v0", 0)


@pytest.mark.parametrize("name", ["family", "ChainEnv", "make_chain"])
def test_check_task_family_accepts_specs(user_module: str, name: str) -> None:
    from metarl.tasks import check_task_family

    check_task_family(f"{user_module}:{name}")
