"""Navigation2D (MAML point env): oracle tests by hand, task splits, checkers, batched == SyncVectorEnv."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from metarl.envs.navigation import Navigation2DEnv, Navigation2DVectorEnv, NavigationTask
from metarl.tasks import task_split

ROOT = Path(__file__).resolve().parents[1]


def make(goal: tuple[float, float], **kwargs) -> Navigation2DEnv:
    env = Navigation2DEnv(task=NavigationTask(goal=goal), **kwargs)
    env.reset(seed=0)
    return env


# --- oracle tests: answers computed by hand ---------------------------------------------------------------
def test_reset_starts_at_origin_float32():
    env = Navigation2DEnv()
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (2,)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert info == {}


def test_rewards_by_hand_and_reaching_goal():
    # Goal (0.3, -0.2): three moves of (0.1, -0.1) then ... by hand:
    # s1 = (0.1, -0.1): d = (-0.2, 0.1), r = -sqrt(0.05)
    # s2 = (0.2, -0.2): d = (-0.1, 0.0), r = -0.1
    # s3 = (0.3, -0.2) with action (0.1, 0): d = 0 -> terminated, r = 0
    env = make((0.3, -0.2))
    expected = [(-math.sqrt(0.05), False), (-0.1, False), (0.0, True)]
    actions = [(0.1, -0.1), (0.1, -0.1), (0.1, 0.0)]
    for action, (r, term) in zip(actions, expected, strict=True):
        obs, reward, terminated, truncated, _ = env.step(np.array(action, dtype=np.float32))
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert reward == pytest.approx(r, abs=1e-7)
        assert terminated is term and truncated is False
    np.testing.assert_allclose(obs, [0.3, -0.2], atol=1e-7)


def test_actions_are_clipped():
    env = make((0.5, 0.5))
    obs, reward, *_ = env.step(np.array([7.0, -3.0]))
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)
    assert reward == pytest.approx(-math.hypot(0.4, 0.6))
    obs, *_ = env.step([0.05, -0.02])  # within bounds: unchanged
    np.testing.assert_allclose(obs, [0.15, -0.12], atol=1e-7)


def test_termination_box_is_strict_and_per_coordinate():
    # |dx| < 0.01 and |dy| < 0.01: a point 0.009 off in both coordinates terminates (distance 0.0127 > 0.01:
    # it is a box, not a disc); 0.011 off in one coordinate does not.
    _, _, terminated, *_ = make((0.009, 0.009)).step([0.0, 0.0])
    assert terminated
    _, _, terminated, *_ = make((0.011, 0.0)).step([0.0, 0.0])
    assert not terminated
    _, _, terminated, *_ = make((-0.009, 0.0)).step([0.0, 0.0])
    assert terminated


def test_truncated_exactly_at_horizon():
    env = make((0.5, 0.5), horizon=5)
    flags = [env.step([-0.1, -0.1])[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    env = Navigation2DEnv(task=NavigationTask(goal=(0.4, 0.4)))
    env.reset()
    for t in range(1, 101):
        obs, _, terminated, truncated, _ = env.step([-0.1, 0.1])
        assert not terminated and truncated == (t == 100)
    # The farthest an episode can go stays inside the bounded observation space.
    np.testing.assert_allclose(obs, [-10.0, 10.0], rtol=1e-6)
    assert env.observation_space.contains(obs)


def test_terminated_and_truncated_together_on_last_step():
    env = make((0.1, 0.0), horizon=1)
    _, _, terminated, truncated, _ = env.step([0.1, 0.0])
    assert terminated and truncated


def test_oracle_observation_appends_goal():
    env = Navigation2DEnv(oracle=True, task=NavigationTask(goal=(0.25, -0.5)))
    assert env.observation_space.shape == (4,)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.array([0.0, 0.0, 0.25, -0.5], dtype=np.float32))
    obs, *_ = env.step([0.1, 0.1])
    np.testing.assert_allclose(obs, [0.1, 0.1, 0.25, -0.5], atol=1e-7)
    obs, _ = env.reset(options={"task": NavigationTask(goal=(-0.75, 0.9))})
    np.testing.assert_array_equal(obs, np.array([0.0, 0.0, -0.75, 0.9], dtype=np.float32))


def test_spaces():
    env = Navigation2DEnv(horizon=20)
    assert env.action_space == gymnasium.spaces.Box(-0.1, 0.1, (2,), np.float32)
    assert env.observation_space.high[0] == pytest.approx(2.0)
    oracle = Navigation2DEnv(oracle=True)
    np.testing.assert_allclose(oracle.observation_space.high, [10.0, 10.0, 1.0, 1.0], rtol=1e-6)


def test_set_task_and_reset_option():
    env = Navigation2DEnv()
    t = NavigationTask(goal=(0.1, 0.2))
    env.set_task(t)
    assert env.get_task() == t
    t2 = NavigationTask(goal=(-0.3, 0.0))
    env.reset(options={"task": t2})
    assert env.get_task() == t2
    _, reward, *_ = env.step([0.0, 0.0])
    assert reward == pytest.approx(-0.3)


# --- tasks ------------------------------------------------------------------------------------------------
def test_task_json_round_trip_and_normalisation():
    t = NavigationTask(goal=(np.float32(0.1), np.float64(-0.37)))
    assert all(type(v) is float for v in t.goal)
    assert NavigationTask.from_json(t.to_json()) == t
    assert json.loads(t.to_json())["family"] == "navigation2d"
    for task in Navigation2DEnv().sample_tasks(20, np.random.default_rng(3)):
        assert NavigationTask.from_json(task.to_json()) == task
        assert hash(task) == hash(NavigationTask.from_json(task.to_json()))


def test_splits_are_disjoint_and_in_range():
    env = Navigation2DEnv()
    rng = np.random.default_rng(0)
    train = env.sample_tasks(300, rng, split="train")
    test = env.sample_tasks(100, rng, split="test")
    assert all(task_split(t) == "train" for t in train)
    assert all(task_split(t) == "test" for t in test)
    assert not set(train) & set(test)
    for t in train + test:
        assert max(abs(g) for g in t.goal) <= 0.5
    ood = env.sample_tasks(200, rng, split="ood")
    for t in ood:
        assert 0.5 < max(abs(g) for g in t.goal) <= 1.0
    goals = np.array([t.goal for t in train])
    assert goals.min() < -0.4 and goals.max() > 0.4  # the whole prior is covered


def test_sample_tasks_deterministic_under_seed():
    a, b = Navigation2DEnv(), Navigation2DEnv()
    a.reset(seed=123)
    b.reset(seed=123)
    assert a.sample_tasks(5) == b.sample_tasks(5)
    assert a.sample_tasks(5, split="ood") == b.sample_tasks(5, split="ood")
    va, vb = Navigation2DVectorEnv(3), Navigation2DVectorEnv(3)
    va.reset(seed=7)
    vb.reset(seed=7)
    assert va.sample_tasks(4) == vb.sample_tasks(4)
    assert Navigation2DEnv().get_task() == Navigation2DEnv().get_task()  # default task is fixed


# --- checkers and registration ----------------------------------------------------------------------------
KNOWN_WARNINGS = ("Not able to test alternative render modes",  # the unwrapped env has no spec
                  "symmetric and normalized Box action space")  # SB3 prefers [-1, 1]; the MAML definition is 0.1


@pytest.mark.parametrize("oracle", [False, True])
def test_env_checkers(oracle):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(Navigation2DEnv(oracle=oracle))
        sb3_check_env(Navigation2DEnv(oracle=oracle))
    unexpected = [str(w.message) for w in caught if not any(k in str(w.message) for k in KNOWN_WARNINGS)]
    assert not unexpected


def test_gymnasium_make_and_make_vec():
    env = gymnasium.make("metarl/Navigation2D-v0", horizon=50)
    assert isinstance(env.unwrapped, Navigation2DEnv) and env.unwrapped.horizon == 50
    env.reset(seed=0)
    env.step(env.action_space.sample())
    venv = gymnasium.make_vec("metarl/Navigation2D-v0", num_envs=4)
    assert isinstance(venv, Navigation2DVectorEnv) and venv.num_envs == 4
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 2) and venv.observation_space.contains(obs)
    obs, reward, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert reward.shape == terminated.shape == truncated.shape == (4,)
    assert venv.single_observation_space == gymnasium.make("metarl/Navigation2D-v0").observation_space
    assert venv.single_action_space == env.action_space


# --- batched twin == SyncVectorEnv ------------------------------------------------------------------------
@pytest.mark.parametrize("oracle", [False, True])
def test_batched_equals_sync_vector_env(oracle):
    n, horizon, steps = 6, 12, 60
    rng = np.random.default_rng(0)
    # Goals near the origin are reached (terminated) within a few steps; the others hit the horizon.
    tasks = [NavigationTask(goal=(0.05 * i - 0.1, 0.03)) for i in range(3)]
    tasks += Navigation2DEnv().sample_tasks(n - 3, rng)
    batched = Navigation2DVectorEnv(n, horizon=horizon, oracle=oracle, tasks=tasks)
    sync = gymnasium.vector.SyncVectorEnv(
        [lambda t=t: Navigation2DEnv(horizon=horizon, oracle=oracle, task=t) for t in tasks])
    assert batched.observation_space == sync.observation_space
    assert batched.action_space == sync.action_space
    ob, _ = batched.reset(seed=5)
    os_, _ = sync.reset(seed=5)
    np.testing.assert_array_equal(ob, os_)
    goals = np.array([t.goal for t in tasks])
    n_term = n_trunc = 0
    for step in range(steps):
        actions = rng.normal(scale=0.15, size=(n, 2))  # ~50% of coordinates clipped
        # Steer the near goals home (clipped when far, jittered within the termination box when close).
        actions[:3] = goals[:3] - ob[:3, :2] + rng.uniform(-0.004, 0.004, size=(3, 2))
        if step % 7 == 0:
            actions[0] = 1e3
        out_b = batched.step(actions)
        out_s = sync.step(actions)
        for xb, xs in zip(out_b[:4], out_s[:4], strict=True):
            assert xb.shape == xs.shape
            np.testing.assert_array_equal(xb, xs)
        assert out_b[0].dtype == np.float32 and out_b[1].dtype == out_s[1].dtype
        ob = out_b[0]
        n_term += int(out_b[2].sum())
        n_trunc += int(out_b[3].sum())
    assert n_term >= 3 and n_trunc >= 3  # several autoresets of both kinds were exercised
    assert batched.get_tasks() == tasks  # kept across autoresets


def test_vector_reset_options_tasks_and_seed_list():
    venv = Navigation2DVectorEnv(2, oracle=True)
    tasks = [NavigationTask(goal=(0.1, 0.2)), NavigationTask(goal=(-0.3, 0.4))]
    obs, _ = venv.reset(seed=[1, None], options={"tasks": tasks})
    np.testing.assert_allclose(obs[:, 2:], [[0.1, 0.2], [-0.3, 0.4]], atol=1e-7)
    assert venv.get_tasks() == tasks


# --- bad arguments ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"horizon": 0}, "horizon must be an int >= 1, got 0"),
    ({"horizon": 2.5}, "horizon"),
    ({"horizon": True}, "horizon"),
    ({"oracle": "yes"}, "oracle must be a bool"),
    ({"render_mode": "human"}, "render_mode"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Navigation2DEnv(**kwargs)
    with pytest.raises(ValueError, match=match):
        Navigation2DVectorEnv(2, **kwargs)


def test_bad_tasks_and_actions():
    with pytest.raises(ValueError, match="goal must be a pair"):
        NavigationTask(goal=(0.1,))
    with pytest.raises(ValueError, match="goal must be a pair"):
        NavigationTask(goal=(0.1, float("nan")))
    env = Navigation2DEnv()
    with pytest.raises(TypeError, match="NavigationTask"):
        env.set_task((0.1, 0.2))
    with pytest.raises(ValueError, match="oracle=True"):
        Navigation2DEnv(oracle=True, task=NavigationTask(goal=(2.0, 0.0)))
    Navigation2DEnv(task=NavigationTask(goal=(2.0, 0.0)))  # fine without the oracle
    with pytest.raises(RuntimeError, match="before reset"):
        env.step([0.0, 0.0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        env.step([np.nan, 0.0])
    with pytest.raises(ValueError, match="split must be one of"):
        env.sample_tasks(2, split="validation")
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        Navigation2DVectorEnv(0)
    venv = Navigation2DVectorEnv(2)
    with pytest.raises(ValueError, match="one task per sub-env"):
        venv.set_tasks([NavigationTask(goal=(0.0, 0.0))])
    with pytest.raises(ValueError, match="not both"):
        Navigation2DVectorEnv(2, task=NavigationTask(goal=(0.0, 0.0)), tasks=[NavigationTask(goal=(0.0, 0.0))] * 2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.zeros((2, 2)))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        venv.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one seed per sub-env"):
        venv.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        venv.step(np.array([[0.0, 0.0], [np.nan, 0.0]]))
    np.testing.assert_array_equal(venv.step(np.zeros((2, 2)))[0], 0.0)  # the failed step changed nothing


def test_infinite_actions_are_clipped_and_nan_ignored_when_autoresetting():
    env = make((0.5, 0.5))
    obs, *_ = env.step([np.inf, -np.inf])
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)
    venv = Navigation2DVectorEnv(2, horizon=1)
    venv.reset(seed=0)
    venv.step(np.full((2, 2), np.inf))
    # Both sub-envs were truncated: this step resets them and ignores the actions, NaN or not (as SyncVectorEnv).
    obs, reward, terminated, truncated, _ = venv.step(np.full((2, 2), np.nan))
    np.testing.assert_array_equal(obs, 0.0)
    np.testing.assert_array_equal(reward, 0.0)
    assert not terminated.any() and not truncated.any()


def test_step_after_episode_end_warns():
    env = make((0.5, 0.5), horizon=1)
    env.step([0.0, 0.0])
    with pytest.warns(UserWarning, match="after the episode ended"):
        env.step([0.0, 0.0])


# --- benchmark smoke test ---------------------------------------------------------------------------------
def test_env_throughput_benchmark_quick(tmp_path):
    out = tmp_path / "throughput.json"
    script = ROOT / "benchmarks" / "env_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert rows and any(r["env_id"] == "metarl/Navigation2D-v0" and r["status"] == "ok" for r in rows)
    assert any(r["env_id"] == "CartPole-v1" for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["async_steps_per_s"]["median"] > 0 and r["ratio_vs_async"] > 0 for r in ok)
    assert "provenance" in data
    assert "|" in proc.stdout  # the markdown table
