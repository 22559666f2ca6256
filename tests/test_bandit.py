"""Bernoulli bandit env (RL^2): rewards by hand, trial length, task splits, checkers, batched == SyncVectorEnv."""

from __future__ import annotations

import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl.envs.bandit import BanditEnv, BanditTask, BanditVectorEnv
from metarl.rng import key_from_seed, uniform
from metarl.tasks import check_task_family, task_split


def make(probs: tuple[float, ...], n_pulls: int = 100, seed: int = 0) -> BanditEnv:
    env = BanditEnv(n_arms=len(probs), n_pulls=n_pulls, task=BanditTask(probs=probs))
    env.reset(seed=seed)
    return env


# --- oracle tests: answers computed by hand ---------------------------------------------------------------
def test_constant_observation_and_spaces():
    env = BanditEnv(n_arms=7)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (1,) and info == {}
    np.testing.assert_array_equal(obs, [0.0])
    assert env.observation_space == gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
    assert env.action_space == gymnasium.spaces.Discrete(7)
    obs, *_ = env.step(6)
    np.testing.assert_array_equal(obs, [0.0])


def test_rewards_by_hand():
    # Arm 0 never pays, arm 1 always pays, arm 2 pays when the t-th counter uniform of the seed's key is < 0.3.
    env = make((0.0, 1.0, 0.3), seed=11)
    key = key_from_seed(11)
    arms = [0, 1, 2, 2, 1, 0, 2, 2, 2, 2]
    for t, arm in enumerate(arms):
        _, reward, terminated, truncated, info = env.step(arm)
        u = float(uniform(key, t))
        expected = {0: 0.0, 1: 1.0, 2: 1.0 if u < 0.3 else 0.0}[arm]
        assert reward == expected and isinstance(reward, float)
        assert terminated is False and truncated is False
        assert info == {"expected_reward": (0.0, 1.0, 0.3)[arm], "best_prob": 1.0}


def test_one_counter_draw_per_pull_whatever_the_arm():
    # Same seed, different arm sequences: pull t of arm 2 always sees uniform(key, t).
    a = make((0.5, 0.5, 0.5), seed=2)
    b = make((0.5, 0.5, 0.5), seed=2)
    ra = [a.step(t % 3)[1] for t in range(30)]
    rb = [b.step((t + 1) % 3)[1] for t in range(30)]
    assert ra == rb  # all arms have the same p, so the reward depends on t only
    assert 5 < sum(ra) < 25


def test_trial_length_truncation_never_terminated():
    env = make((0.2, 0.8), n_pulls=5)
    flags = [env.step(1)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    with pytest.warns(UserWarning, match="after the trial ended"):
        env.step(0)
    assert BanditEnv().horizon == 100 and BanditEnv().n_arms == 5


def test_counter_continues_across_trials_and_restarts_with_seed():
    env = make((0.5, 0.5), n_pulls=4, seed=9)
    first = [env.step(0)[1] for _ in range(4)]
    env.reset()  # no seed: the next trial continues the stream (counters 4..7)
    second = [env.step(0)[1] for _ in range(4)]
    key = key_from_seed(9)
    assert first + second == [float(uniform(key, t) < 0.5) for t in range(8)]
    env.reset(seed=9)
    assert [env.step(0)[1] for _ in range(4)] == first


def test_empirical_means_match_probabilities():
    probs = (0.1, 0.5, 0.9)
    venv = BanditVectorEnv(3000, n_arms=3, n_pulls=1000, task=BanditTask(probs=probs))
    venv.reset(seed=0)
    for arm, p in enumerate(probs):
        _, reward, *_ = venv.step(np.full(3000, arm))
        # 3000 Bernoulli(p) draws: the mean is within 4 standard errors of p.
        assert abs(reward.mean() - p) < 4 * np.sqrt(p * (1 - p) / 3000)


def test_set_task_and_reset_option():
    env = BanditEnv(n_arms=2)
    t = BanditTask(probs=(0.0, 1.0))
    env.set_task(t)
    assert env.get_task() == t
    env.reset(seed=0, options={"task": BanditTask(probs=(1.0, 0.0))})
    assert env.get_task() == BanditTask(probs=(1.0, 0.0))
    assert env.step(0)[1] == 1.0 and env.step(1)[1] == 0.0


# --- tasks ------------------------------------------------------------------------------------------------
def test_task_json_round_trip_and_normalisation():
    t = BanditTask(probs=np.array([0.25, 0.5], dtype=np.float32))
    assert t.probs == (0.25, 0.5) and all(type(p) is float for p in t.probs)
    assert BanditTask.from_json(t.to_json()) == t
    assert json.loads(t.to_json())["family"] == "bandit"
    for task in BanditEnv(n_arms=10).sample_tasks(20, np.random.default_rng(3)):
        assert BanditTask.from_json(task.to_json()) == task and task.n_arms == 10


def test_splits_are_disjoint_and_cover_the_prior():
    env = BanditEnv(n_arms=5)
    rng = np.random.default_rng(0)
    train = env.sample_tasks(300, rng, split="train")
    test = env.sample_tasks(100, rng, split="test")
    assert all(task_split(t) == "train" for t in train) and all(task_split(t) == "test" for t in test)
    assert not set(train) & set(test)
    p = np.array([t.probs for t in train + test])
    assert p.min() < 0.01 and p.max() > 0.99 and abs(p.mean() - 0.5) < 0.03  # U[0, 1]
    with pytest.raises(ValueError, match="no out-of-distribution"):
        env.sample_tasks(2, rng, split="ood")


def test_sample_tasks_deterministic_under_seed():
    a, b = BanditEnv(), BanditEnv()
    a.reset(seed=123)
    b.reset(seed=123)
    assert a.sample_tasks(5) == b.sample_tasks(5)
    va, vb = BanditVectorEnv(3), BanditVectorEnv(3)
    va.reset(seed=7)
    vb.reset(seed=7)
    assert va.sample_tasks(4) == vb.sample_tasks(4)
    assert BanditEnv().get_task() == BanditEnv().get_task()


# --- checkers and registration ----------------------------------------------------------------------------
def test_env_checkers():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(BanditEnv(), skip_render_check=True)
        sb3_check_env(BanditEnv(n_arms=3, n_pulls=10), skip_render_check=True)
    assert not [str(w.message) for w in caught]


def test_check_task_family_by_id():
    check_task_family("metarl/Bandit-v0")


def test_gymnasium_make_and_make_vec():
    env = gymnasium.make("metarl/Bandit-v0", n_arms=10, n_pulls=50)
    assert isinstance(env.unwrapped, BanditEnv) and env.unwrapped.n_arms == 10 and env.unwrapped.horizon == 50
    env.reset(seed=0)
    env.step(env.action_space.sample())
    venv = gymnasium.make_vec("metarl/Bandit-v0", num_envs=4, n_arms=10)
    assert isinstance(venv, BanditVectorEnv) and venv.num_envs == 4
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 1) and venv.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert reward.shape == terminated.shape == truncated.shape == info["expected_reward"].shape == (4,)
    assert venv.single_action_space == env.action_space


# --- batched twin == SyncVectorEnv ------------------------------------------------------------------------
# n_pulls=150: draws come from refilled blocks; desync: sub-envs at different points of their trials.
@pytest.mark.parametrize(("n_pulls", "steps", "desync"), [(7, 40, False), (150, 310, False), (7, 40, True)])
def test_batched_equals_sync_vector_env(n_pulls, steps, desync):
    n, k = 6, 4
    rng = np.random.default_rng(0)
    tasks = BanditEnv(n_arms=k).sample_tasks(n, rng)
    batched = BanditVectorEnv(n, n_arms=k, n_pulls=n_pulls, tasks=tasks)
    sync = gymnasium.vector.SyncVectorEnv(
        [lambda t=t: BanditEnv(n_arms=k, n_pulls=n_pulls, task=t) for t in tasks])
    assert batched.observation_space == sync.observation_space and batched.action_space == sync.action_space
    np.testing.assert_array_equal(batched.reset(seed=5)[0], sync.reset(seed=5)[0])
    if desync:  # only reachable by hand (sub-envs share n_pulls): exercises the partial-autoreset path
        for i, t in [(0, 3), (2, 5)]:
            batched._clock.t[i] = sync.envs[i].unwrapped._t = t
    n_trunc = 0
    for _ in range(steps):
        actions = rng.integers(0, k, size=n)
        out_b, out_s = batched.step(actions), sync.step(actions)
        for xb, xs in zip(out_b[:4], out_s[:4], strict=True):
            assert xb.shape == xs.shape and xb.dtype == xs.dtype
            np.testing.assert_array_equal(xb, xs)
        pulled = out_s[4].get("_expected_reward", np.zeros(n, bool))  # autoresetting sub-envs report no info
        if pulled.any():
            np.testing.assert_array_equal(out_b[4]["expected_reward"][pulled], out_s[4]["expected_reward"][pulled])
        np.testing.assert_array_equal(out_b[4]["expected_reward"][~pulled], 0.0)
        n_trunc += int(out_b[3].sum())
    assert n_trunc >= 2 * n  # several autoresets
    assert batched.get_tasks() == tasks


def test_vector_reset_options_tasks_and_seed_list():
    venv = BanditVectorEnv(2, n_arms=2)
    tasks = [BanditTask(probs=(0.0, 1.0)), BanditTask(probs=(1.0, 0.0))]
    venv.reset(seed=[1, None], options={"tasks": tasks})
    assert venv.get_tasks() == tasks
    np.testing.assert_array_equal(venv.probs, [[0.0, 1.0], [1.0, 0.0]])
    _, reward, *_ = venv.step(np.array([1, 1]))
    np.testing.assert_array_equal(reward, [1.0, 0.0])


# --- bad arguments ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_arms": 1}, "n_arms must be an int >= 2, got 1"),
    ({"n_arms": 2.0}, "n_arms"),
    ({"n_pulls": 0}, "n_pulls must be an int >= 1, got 0"),
    ({"n_pulls": True}, "n_pulls"),
    ({"render_mode": "human"}, "render_mode"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BanditEnv(**kwargs)
    with pytest.raises(ValueError, match=match):
        BanditVectorEnv(2, **kwargs)


def test_bad_tasks_and_actions():
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        BanditTask(probs=(0.5, 1.5))
    with pytest.raises(ValueError, match="at least 2 arms"):
        BanditTask(probs=(0.5,))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        BanditTask(probs=(0.5, float("nan")))
    env = BanditEnv(n_arms=3)
    with pytest.raises(TypeError, match="BanditTask"):
        env.set_task((0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="n_arms=3"):
        env.set_task(BanditTask(probs=(0.1, 0.2)))
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (3, -1, 1.0, "a", [0, 1]):
        with pytest.raises(ValueError, match=r"arm index in \[0, 3\)"):
            env.step(bad)
    venv = BanditVectorEnv(2, n_arms=3)
    with pytest.raises(ValueError, match="one task per sub-env"):
        venv.set_tasks([BanditTask(probs=(0.1, 0.2, 0.3))])
    with pytest.raises(ValueError, match="not both"):
        BanditVectorEnv(2, n_arms=2, task=BanditTask(probs=(0.1, 0.2)), tasks=[BanditTask(probs=(0.1, 0.2))] * 2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.zeros(2, dtype=int))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        venv.step(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"arm indices in \[0, 3\)"):
        venv.step(np.array([0, 3]))
    with pytest.raises(ValueError, match="one seed per sub-env"):
        venv.reset(seed=[1, 2, 3])


def test_out_of_range_action_ignored_when_autoresetting():
    venv = BanditVectorEnv(2, n_arms=2, n_pulls=1, task=BanditTask(probs=(1.0, 1.0)))
    venv.reset(seed=0)
    _, reward, _, truncated, _ = venv.step(np.array([0, 1]))
    assert truncated.all() and (reward == 1.0).all()
    _, reward, terminated, truncated, info = venv.step(np.array([-5, 99]))  # both reset: actions ignored
    np.testing.assert_array_equal(reward, 0.0)
    assert not terminated.any() and not truncated.any()
    np.testing.assert_array_equal(info["expected_reward"], 0.0)


def test_returned_arrays_are_not_changed_by_later_calls():
    venv = BanditVectorEnv(3, n_arms=2, n_pulls=1)
    venv.reset(seed=0)
    obs, reward, terminated, truncated, info = venv.step(np.array([0, 1, 0]))
    kept = [x.copy() for x in (obs, reward, terminated, truncated, info["expected_reward"])]
    venv.reset(seed=1)
    venv.step(np.array([1, 0, 1]))
    venv.step(np.array([1, 1, 1]))
    venv.reset(seed=2)
    for x, y in zip((obs, reward, terminated, truncated, info["expected_reward"]), kept, strict=True):
        np.testing.assert_array_equal(x, y)
