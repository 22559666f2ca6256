"""Every registered built-in task family (``metarl.envs.ENV_IDS``) against the shared contract.

For each id: ``gymnasium.make`` gives an env with the meta verbs, Gymnasium's and Stable-Baselines3's
env checkers pass on the unwrapped env, ``gymnasium.make_vec`` gives the batched twin with
``set_tasks``, ``check_task_family`` passes (including twin == single env), and SB3's PPO trains on it.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl import envs as builtin_envs
from metarl.registry import make_env, make_vector_env, task_family_ids
from metarl.rollout import episode_horizon
from metarl.tasks import MetaEnv, MetaVectorEnv, check_task_family

ENV_IDS = builtin_envs.ENV_IDS
IDS = sorted(ENV_IDS)


def test_every_registered_metarl_id_is_listed() -> None:
    assert set(task_family_ids()) == set(ENV_IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_make_gives_a_meta_env(env_id: str) -> None:
    env = gymnasium.make(env_id)
    assert isinstance(env.unwrapped, MetaEnv)
    assert episode_horizon(env) >= 1
    tasks = env.unwrapped.sample_tasks(3, rng=np.random.default_rng(0))
    test = env.unwrapped.sample_tasks(3, rng=np.random.default_rng(0), split="test")
    assert not set(tasks) & set(test)
    obs, _ = env.reset(seed=0, options={"task": tasks[1]})
    assert env.unwrapped.get_task() == tasks[1] and obs in env.observation_space
    env.step(env.action_space.sample())
    assert type(make_env(env_id).unwrapped) is type(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_and_sb3_env_checkers(env_id: str) -> None:
    env = gymnasium.make(env_id).unwrapped
    for task in [env.get_task(), *env.sample_tasks(2, rng=np.random.default_rng(1))]:
        env.set_task(task)
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_gives_the_batched_twin(env_id: str) -> None:
    venv = gymnasium.make_vec(env_id, num_envs=4)
    assert isinstance(venv, gymnasium.vector.VectorEnv) and isinstance(venv, MetaVectorEnv)
    assert venv.num_envs == 4
    assert venv.metadata.get("autoreset_mode") == gymnasium.vector.AutoresetMode.NEXT_STEP
    tasks = venv.sample_tasks(4, rng=np.random.default_rng(0))
    obs, _ = venv.reset(seed=0, options={"tasks": tasks})
    assert venv.get_tasks() == tasks and obs in venv.observation_space
    obs, reward, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert np.shape(reward) == np.shape(terminated) == np.shape(truncated) == (4,)
    assert type(make_vector_env(env_id, 4)) is type(venv)
    venv.close()


@pytest.mark.parametrize("env_id", IDS)
def test_check_task_family(env_id: str) -> None:
    check_task_family(env_id)


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_ppo_trains(env_id: str) -> None:
    env = gymnasium.make(env_id)
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=2, policy_kwargs={"net_arch": [16]},
                seed=0, device="cpu")
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(np.asarray(action).astype(env.action_space.dtype).reshape(env.action_space.shape))
