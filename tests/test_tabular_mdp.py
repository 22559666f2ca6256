"""Random tabular MDPs (RL^2): Box-Muller rewards and inverse-CDF transitions by hand, priors, checkers,
batched == SyncVectorEnv."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl.envs.tabular_mdp import (
    TabularMDPEnv,
    TabularMDPTask,
    TabularMDPVectorEnv,
    gaussian_noise,
    inverse_cdf_table,
    sample_next_state,
)
from metarl.rng import key_from_seed, uniform
from metarl.tasks import check_task_family, task_split

# Two states, two actions. Action 0 swaps the state, action 1 stays; state 1, action 0 is random (0.25 / 0.75).
SMALL = TabularMDPTask(rewards=((0.5, 2.0), (1.0, -1.0)),
                       transitions=(((0.0, 1.0), (1.0, 0.0)), ((0.25, 0.75), (0.0, 1.0))))


def small_env(horizon: int = 10, seed: int = 0) -> TabularMDPEnv:
    env = TabularMDPEnv(n_states=2, n_actions=2, horizon=horizon, task=SMALL)
    env.reset(seed=seed)
    return env


def box_muller(key, counter: int) -> float:
    u1, u2 = float(uniform(key, counter)), float(uniform(key, counter + 1))
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


# --- oracle tests: answers computed by hand ---------------------------------------------------------------
def test_inverse_cdf_by_hand():
    # Row (0.2, 0, 0.5, 0.3): cumulative (0.2, 0.2, 0.7, +inf). State 1 (probability 0) is never chosen, and
    # the last positive state's entry is +inf so a rounded-down cumulative sum cannot push u past it.
    cdf = inverse_cdf_table(np.array([0.2, 0.0, 0.5, 0.3]))
    np.testing.assert_array_equal(cdf, [0.2, 0.2, 0.7, np.inf])
    u = np.array([0.0, 0.1999, 0.2, 0.6999, 0.7, 0.9999999])
    np.testing.assert_array_equal(sample_next_state(np.tile(cdf, (6, 1)), u), [0, 0, 2, 2, 3, 3])
    # Trailing zero-probability states are never chosen, even for u just below 1.
    cdf = inverse_cdf_table(np.array([0.5, 0.5, 0.0]))
    np.testing.assert_array_equal(cdf, [0.5, np.inf, np.inf])
    assert sample_next_state(cdf[None], np.array([1.0 - 2.0**-53]))[0] == 1
    # Batched rows: [2, 2, 3]-shaped table works row by row.
    table = inverse_cdf_table(np.array(SMALL.transitions))
    np.testing.assert_array_equal(table[1, 0], [0.25, np.inf])
    np.testing.assert_array_equal(table[0, 0], [0.0, np.inf])


def test_box_muller_by_hand():
    assert gaussian_noise(np.array([0.0]), np.array([0.0]))[0] == 0.0  # sqrt(-2 ln 1) = 0
    u1 = 1.0 - math.exp(-0.5)  # -2 ln(1 - u1) = 1
    np.testing.assert_allclose(gaussian_noise(np.array([u1, u1]), np.array([0.0, 0.5])), [1.0, -1.0], rtol=1e-12)


def test_steps_by_hand():
    env = small_env(seed=4)
    key = key_from_seed(4)
    obs, info = env.reset(seed=4)
    np.testing.assert_array_equal(obs, [1.0, 0.0])
    assert obs.dtype == np.float32 and info == {"state": 0}
    # Step 0: state 0, action 1 -> stays in 0 (P = (1, 0)); reward 2.0 + z(counters 0, 1).
    obs, reward, terminated, truncated, info = env.step(1)
    assert reward == pytest.approx(2.0 + box_muller(key, 0), abs=1e-12)
    assert info == {"state": 0} and not terminated and not truncated
    # Step 1: state 0, action 0 -> state 1 surely; reward 0.5 + z(counters 3, 4).
    obs, reward, *_ = env.step(0)
    np.testing.assert_array_equal(obs, [0.0, 1.0])
    assert reward == pytest.approx(0.5 + box_muller(key, 3), abs=1e-12)
    # Steps 2..: state 1, action 0 -> state 0 iff u3 = uniform(key, c + 2) < 0.25.
    for c in range(6, 30, 3):
        state = env._state
        obs, reward, *_ = env.step(0 if state == 1 else 1)
        if state == 1:
            assert reward == pytest.approx(1.0 + box_muller(key, c), abs=1e-12)
            assert info_state(obs) == (0 if float(uniform(key, c + 2)) < 0.25 else 1)
        else:
            assert reward == pytest.approx(2.0 + box_muller(key, c), abs=1e-12) and info_state(obs) == 0


def info_state(obs: np.ndarray) -> int:
    assert obs.sum() == 1.0
    return int(np.argmax(obs))


def test_episode_starts_in_state_0_and_truncates_at_horizon():
    env = TabularMDPEnv()
    assert env.horizon == 10 and env.observation_space == gymnasium.spaces.Box(0.0, 1.0, (10,), np.float32)
    assert env.action_space == gymnasium.spaces.Discrete(5)
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        assert obs.tolist() == [1.0] + [0.0] * 9
        flags = [env.step(episode % 5)[2:4] for _ in range(10)]
        assert flags == [(False, False)] * 9 + [(False, True)]
    with pytest.warns(UserWarning, match="after the episode ended"):
        env.step(0)


def test_counter_continues_across_episodes():
    env = small_env(horizon=2, seed=8)
    first = [env.step(1)[1] for _ in range(2)]
    env.reset()  # same trial: fresh noise, counters 6.. (3 draws per step)
    second = [env.step(1)[1] for _ in range(2)]
    key = key_from_seed(8)
    np.testing.assert_allclose(first + second, [2.0 + box_muller(key, c) for c in (0, 3, 6, 9)], atol=1e-12)
    env.reset(seed=8)
    assert [env.step(1)[1] for _ in range(2)] == first


def test_random_policy_earns_one_per_step():
    # E[mu] = 1 and the noise has mean 0, so a uniformly random policy earns 10 per 10-step episode on average
    # (RL^2 Table 2: random 100.1 over 10 episodes).
    n = 2000
    venv = TabularMDPVectorEnv(n)
    tasks = venv.sample_tasks(n // 4, np.random.default_rng(1))  # 4 episodes per MDP keeps the test fast
    venv.reset(seed=0, options={"tasks": tasks * 4})
    rng = np.random.default_rng(2)
    total = np.zeros(n)
    for _ in range(10):
        total += venv.step(rng.integers(0, 5, size=n))[1]
    # Per-episode return std is about sqrt(10 * 2) (mu spread + noise, plus state dependence): 4 s.e. ~ 0.4.
    assert abs(total.mean() - 10.0) < 0.5


def test_noise_is_standard_normal():
    key = key_from_seed(0)
    c = np.arange(0, 60000, 2, dtype=np.uint64)
    z = gaussian_noise(uniform(key, c), uniform(key, c + np.uint64(1)))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.015


def test_prior_statistics():
    tasks = TabularMDPEnv().sample_tasks(200, np.random.default_rng(0))
    mu = np.array([t.rewards for t in tasks])
    p = np.array([t.transitions for t in tasks])
    assert mu.shape == (200, 10, 5) and p.shape == (200, 10, 5, 10)
    assert abs(mu.mean() - 1.0) < 0.03 and abs(mu.std() - 1.0) < 0.03  # N(1, 1)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    # Flat Dirichlet(1, ..., 1) over 10 states: each entry has mean 0.1 and variance 0.9 / (10 * 11) ~ 0.0082.
    assert abs(p.mean() - 0.1) < 1e-9 and abs(p.var() - 0.9 / 110) < 5e-4


# --- tasks ------------------------------------------------------------------------------------------------
def test_task_json_round_trip_and_sizes():
    assert TabularMDPTask.from_json(SMALL.to_json()) == SMALL
    assert json.loads(SMALL.to_json())["family"] == "tabular_mdp"
    assert (SMALL.n_states, SMALL.n_actions) == (2, 2)
    t = TabularMDPTask(rewards=np.zeros((1, 3)), transitions=np.ones((1, 3, 1)))
    assert t.rewards == ((0.0, 0.0, 0.0),) and type(t.transitions[0][0][0]) is float
    for task in TabularMDPEnv(n_states=3, n_actions=2).sample_tasks(5, np.random.default_rng(3)):
        assert TabularMDPTask.from_json(task.to_json()) == task
        assert hash(task) == hash(TabularMDPTask.from_json(task.to_json()))


def test_splits_are_disjoint_and_sampling_is_deterministic():
    env = TabularMDPEnv()
    rng = np.random.default_rng(0)
    train = env.sample_tasks(40, rng, split="train")
    test = env.sample_tasks(10, rng, split="test")
    assert all(task_split(t) == "train" for t in train) and all(task_split(t) == "test" for t in test)
    assert not set(train) & set(test)
    with pytest.raises(ValueError, match="no out-of-distribution"):
        env.sample_tasks(1, rng, split="ood")
    a, b = TabularMDPEnv(), TabularMDPEnv()
    a.reset(seed=5)
    b.reset(seed=5)
    assert a.sample_tasks(3) == b.sample_tasks(3)
    assert TabularMDPEnv().get_task() == TabularMDPEnv().get_task()


def test_set_task_and_reset_option():
    env = TabularMDPEnv(n_states=2, n_actions=2)
    env.set_task(SMALL)
    assert env.get_task() == SMALL
    other = TabularMDPTask(rewards=((0.0, 0.0), (0.0, 0.0)), transitions=(((1.0, 0.0),) * 2, ((1.0, 0.0),) * 2))
    env.reset(seed=0, options={"task": other})
    assert env.get_task() == other


# --- checkers and registration ----------------------------------------------------------------------------
def test_env_checkers():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(TabularMDPEnv(), skip_render_check=True)
        sb3_check_env(TabularMDPEnv(n_states=3, n_actions=2), skip_render_check=True)
    assert not [str(w.message) for w in caught]


def test_check_task_family_by_id():
    check_task_family("metarl/TabularMDP-v0")


def test_gymnasium_make_and_make_vec():
    env = gymnasium.make("metarl/TabularMDP-v0", horizon=20)
    assert isinstance(env.unwrapped, TabularMDPEnv) and env.unwrapped.horizon == 20
    env.reset(seed=0)
    env.step(env.action_space.sample())
    venv = gymnasium.make_vec("metarl/TabularMDP-v0", num_envs=4)
    assert isinstance(venv, TabularMDPVectorEnv) and venv.num_envs == 4
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 10) and venv.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[:, 0], 1.0)
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert reward.shape == terminated.shape == truncated.shape == info["state"].shape == (4,)
    np.testing.assert_array_equal(obs.argmax(1), info["state"])
    assert venv.single_observation_space == env.observation_space


# --- batched twin == SyncVectorEnv ------------------------------------------------------------------------
# horizon=100: draws come from refilled blocks; desync: sub-envs at different points of their episodes.
@pytest.mark.parametrize(("horizon", "steps", "desync"), [(4, 23, False), (100, 210, False), (4, 23, True)])
def test_batched_equals_sync_vector_env(horizon, steps, desync):
    n = 6
    rng = np.random.default_rng(0)
    tasks = TabularMDPEnv().sample_tasks(n - 1, rng) + [TabularMDPEnv().get_task()]
    batched = TabularMDPVectorEnv(n, horizon=horizon, tasks=tasks)
    sync = gymnasium.vector.SyncVectorEnv([lambda t=t: TabularMDPEnv(horizon=horizon, task=t) for t in tasks])
    assert batched.observation_space == sync.observation_space and batched.action_space == sync.action_space
    np.testing.assert_array_equal(batched.reset(seed=3)[0], sync.reset(seed=3)[0])
    if desync:  # only reachable by hand (sub-envs share the horizon): exercises the partial-autoreset path
        for i, t in [(0, 1), (2, 3)]:
            batched._clock.t[i] = sync.envs[i].unwrapped._t = t
    n_trunc = 0
    for _ in range(steps):
        actions = rng.integers(0, 5, size=n)
        out_b, out_s = batched.step(actions), sync.step(actions)
        for xb, xs in zip(out_b[:4], out_s[:4], strict=True):
            assert xb.shape == xs.shape and xb.dtype == xs.dtype
            # Same float64 operations elementwise: equal to the last bit on one machine; tolerance for SIMD paths.
            np.testing.assert_allclose(xb, xs, rtol=1e-13, atol=1e-13)
        n_trunc += int(out_b[3].sum())
    assert n_trunc >= 2 * n  # several autoresets
    assert batched.get_tasks() == tasks


def test_vector_seed_list_keeps_unseeded_streams():
    venv = TabularMDPVectorEnv(2, n_states=2, n_actions=2, tasks=[SMALL, SMALL])
    venv.reset(seed=[4, 4])
    _, r1, *_ = venv.step(np.array([1, 1]))
    assert r1[0] == r1[1] == pytest.approx(2.0 + box_muller(key_from_seed(4), 0), abs=1e-12)
    venv.reset(seed=[4, None])  # sub-env 1 keeps its stream: counter 3
    _, r2, *_ = venv.step(np.array([1, 1]))
    np.testing.assert_allclose(r2, [r1[0], 2.0 + box_muller(key_from_seed(4), 3)], atol=1e-12)


# --- bad arguments ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_states": 0}, "n_states must be an int >= 1, got 0"),
    ({"n_actions": 2.5}, "n_actions"),
    ({"horizon": 0}, "horizon must be an int >= 1, got 0"),
    ({"render_mode": "human"}, "render_mode"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularMDPEnv(**kwargs)
    with pytest.raises(ValueError, match=match):
        TabularMDPVectorEnv(2, **kwargs)


def test_bad_tasks_and_actions():
    with pytest.raises(ValueError, match=r"shape \(S, A, S\) = \(2, 2, 2\)"):
        TabularMDPTask(rewards=((0.0, 0.0), (0.0, 0.0)), transitions=(((1.0,),) * 2,) * 2)
    with pytest.raises(ValueError, match=r"P\[0\]\[1\] summing to 0.5"):
        TabularMDPTask(rewards=((0.0, 0.0),), transitions=(((1.0,), (0.5,)),))
    with pytest.raises(ValueError, match="probabilities >= 0"):
        TabularMDPTask(rewards=((0.0,), (0.0,)), transitions=(((1.5, -0.5),), ((0.0, 1.0),)))
    with pytest.raises(ValueError, match="rectangular"):
        TabularMDPTask(rewards=((0.0, 0.0), (0.0,)), transitions=())
    with pytest.raises(ValueError, match="rewards must be finite"):
        TabularMDPTask(rewards=((math.inf,),), transitions=(((1.0,),),))
    env = TabularMDPEnv()
    with pytest.raises(TypeError, match="TabularMDPTask"):
        env.set_task(SMALL.rewards)
    with pytest.raises(ValueError, match="n_states=10, n_actions=5"):
        env.set_task(SMALL)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (5, -1, 0.0):
        with pytest.raises(ValueError, match=r"action must be an int in \[0, 5\)"):
            env.step(bad)
    venv = TabularMDPVectorEnv(2)
    with pytest.raises(ValueError, match="one task per sub-env"):
        venv.set_tasks([env.get_task()])
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.zeros(2, dtype=int))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        venv.step(np.zeros((2, 1), dtype=int))
    with pytest.raises(ValueError, match=r"actions must be ints in \[0, 5\)"):
        venv.step(np.array([0, 7]))


def test_returned_arrays_are_not_changed_by_later_calls():
    venv = TabularMDPVectorEnv(3, horizon=1)
    venv.reset(seed=0)
    obs, reward, terminated, truncated, info = venv.step(np.array([0, 1, 2]))
    kept = [x.copy() for x in (obs, reward, terminated, truncated, info["state"])]
    venv.reset(seed=1)
    venv.step(np.array([3, 4, 0]))
    venv.step(np.array([1, 1, 1]))
    venv.reset(seed=2)
    for x, y in zip((obs, reward, terminated, truncated, info["state"]), kept, strict=True):
        np.testing.assert_array_equal(x, y)
