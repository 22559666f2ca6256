"""Every registered built-in task family (``metarl.envs.ENV_IDS``) against the shared contract.

For each id: ``gymnasium.make`` gives an env with the meta verbs, Gymnasium's and Stable-Baselines3's
env checkers pass on the unwrapped env, ``gymnasium.make_vec`` gives the batched twin with
``set_tasks``, ``check_task_family`` passes (including twin == single env), and SB3's PPO trains on it.
The batched twins' shared pieces are tested here too: the seeding helpers and ``UniformBlocks`` of
``metarl.rng``, and that arrays a twin returns never change afterwards.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl import envs as builtin_envs
from metarl import rng as counter_rng
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


# --- what the batched twins share ---------------------------------------------------------------------------
SHORT_EPISODES: dict[str, dict[str, Any]] = {  # kwargs giving 3-step episodes, so a few steps include autoresets
    "metarl/Navigation2D-v0": {"horizon": 3},
    "metarl/CartPoleDynamics-v0": {"horizon": 3},
    "metarl/Bandit-v0": {"n_pulls": 3},
    "metarl/TabularMDP-v0": {"horizon": 3},
}


def test_short_episode_kwargs_cover_every_id() -> None:
    assert set(SHORT_EPISODES) == set(IDS)


def _arrays(x: Any) -> list[np.ndarray]:
    if isinstance(x, dict):
        return [a for v in x.values() for a in _arrays(v)]
    if isinstance(x, (tuple, list)):
        return [a for v in x for a in _arrays(v)]
    return [x] if isinstance(x, np.ndarray) else []


@pytest.mark.parametrize("env_id", IDS)
def test_returned_arrays_never_change(env_id: str) -> None:
    # Regression: a twin that keeps a returned array as state (e.g. the flags as its autoreset mask) and later
    # writes into it in place changes what a caller kept from an earlier step.
    venv = gymnasium.make_vec(env_id, num_envs=3, **SHORT_EPISODES[env_id])
    venv.action_space.seed(0)
    kept = []
    for t in range(12):
        out = venv.reset(seed=t) if t in (4, 9) else venv.step(venv.action_space.sample()) if t else venv.reset(seed=0)
        kept.append((out, copy.deepcopy(out)))
        state = [v for v in vars(venv.unwrapped).values() if isinstance(v, np.ndarray)]
        for a in _arrays(out):
            assert not any(np.shares_memory(a, v) for v in state), f"call {t} returned an array the env keeps"
    for t, (out, snapshot) in enumerate(kept):
        for a, b in zip(_arrays(out), _arrays(snapshot), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"an array returned by call {t} changed later")
    assert sum(int(np.sum(out[3])) for out, _ in kept if len(out) == 5) > 0  # autoresets were exercised


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("seed", [7, [7, 9, 3]])
def test_seeded_reset_then_sample_tasks_matches_sync_vector_env(env_id: str, seed: int | list[int]) -> None:
    # The twin seeds its np_random as SyncVectorEnv seeds sub-env 0 (which TaskSyncVectorEnv samples tasks
    # with) and draws nothing from it when every sub-env is seeded, so reset(seed=...) is repeatable.
    venv: Any = gymnasium.make_vec(env_id, num_envs=3)
    single: Any = gymnasium.make(env_id).unwrapped
    single.reset(seed=7)
    expected = single.sample_tasks(4)
    for _ in range(2):
        venv.reset(seed=seed)
        assert venv.sample_tasks(4) == expected


def test_batch_seeds() -> None:
    assert counter_rng.batch_seeds(None, 3) == [None, None, None]
    assert counter_rng.batch_seeds(5, 3) == [5, 6, 7]
    assert counter_rng.batch_seeds(np.int64(5), 2) == [5, 6]
    seeds = counter_rng.batch_seeds([np.int64(4), None], 2)
    assert seeds == [4, None] and type(seeds[0]) is int
    with pytest.raises(ValueError, match=r"one seed per sub-env: a list of 2 ints/None, got 3 seeds"):
        counter_rng.batch_seeds([1, 2, 3], 2)
    for bad in (-1, [1, -2], [1, 2.0], [True, 1], "12", 1.5):
        with pytest.raises(ValueError, match="seed"):
            counter_rng.batch_seeds(bad, 2)  # type: ignore[arg-type]


def test_rekey_follows_the_single_env_rule() -> None:
    keys, has_key = np.zeros(3, dtype=np.uint64), np.zeros(3, dtype=bool)
    rng = np.random.default_rng(0)
    rekeyed = counter_rng.rekey([4, None, None], keys, has_key, rng)
    drawn = np.random.default_rng(0).integers(0, 2**62, size=2)  # one seed per unseeded sub-env without a key
    np.testing.assert_array_equal(rekeyed, [True, True, True])
    np.testing.assert_array_equal(keys, counter_rng.key_from_seed([4, *drawn]))
    assert has_key.all()
    before = keys.copy()
    rekeyed = counter_rng.rekey([None, 8, None], keys, has_key, rng)  # keyed and unseeded: streams continue
    np.testing.assert_array_equal(rekeyed, [False, True, False])
    np.testing.assert_array_equal(keys, [before[0], counter_rng.key_from_seed(8), before[2]])
    state = rng.bit_generator.state
    counter_rng.rekey([1, 2, 3], keys, has_key, rng)
    assert rng.bit_generator.state == state  # every sub-env seeded: nothing drawn


def test_reset_stream_follows_the_same_rule() -> None:
    rng = np.random.default_rng(0)
    key, counter = counter_rng.reset_stream(None, None, 0, rng)
    assert key == counter_rng.key_from_seed(int(np.random.default_rng(0).integers(0, 2**62))) and counter == 0
    assert counter_rng.reset_stream(None, key, 12, rng) == (key, 12)
    assert counter_rng.reset_stream(3, key, 12, rng) == (counter_rng.key_from_seed(3), 0)


@pytest.mark.parametrize("transform", [None, lambda u: 2.0 * u[..., ::-1]])
def test_uniform_blocks_give_the_per_step_draws(transform: Any) -> None:
    keys = counter_rng.key_from_seed(np.arange(3))
    counters = np.array([0, 5, 9], dtype=np.uint64)
    blocks = counter_rng.UniformBlocks(draws_per_step=2, max_elements=24, transform=transform)  # 4 steps a block
    assert blocks.exhausted
    refills = 0
    for step in range(10):
        if blocks.exhausted:
            blocks.refill(keys, counters, steps_left=10 - step)
            refills += 1
        expected = counter_rng.uniform(keys[:, None], counters[:, None] + np.arange(2, dtype=np.uint64))
        np.testing.assert_array_equal(blocks.pop(), expected if transform is None else transform(expected))
        counters = counters + np.uint64(2)
    assert refills == 3  # blocks of 4, 4, then the 2 steps left
    blocks.refill(keys, counters, steps_left=5)
    blocks.invalidate()
    assert blocks.exhausted
