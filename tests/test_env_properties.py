"""Property-based tests of every built-in task family (hypothesis): over thousands of sampled tasks,
env arguments and action sequences, every transition of the batched twin equals the one of a
``SyncVectorEnv`` of single envs (autoresets included), observations stay in the observation space,
rewards are finite, and a rerun with the same seeds gives the same transitions.

Each example samples ``N`` tasks from a hypothesis-drawn task seed and split, steps both batched envs
for 1.5 horizons of random in-space actions (boundary values included), and compares.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarl.envs import ENV_IDS
from metarl.registry import make_env, make_vector_env
from metarl.rollout import episode_horizon
from metarl.tasks import TaskSyncVectorEnv

N = 32
EXAMPLES = 40  # x N tasks = 1280 sampled tasks per family

KWARGS: dict[str, Any] = {
    "metarl/Navigation2D-v0": st.fixed_dictionaries({"oracle": st.booleans(), "horizon": st.integers(1, 60)}),
    "metarl/CartPoleDynamics-v0": st.fixed_dictionaries({"oracle": st.booleans(), "horizon": st.integers(1, 120)}),
    "metarl/Bandit-v0": st.fixed_dictionaries({"n_arms": st.integers(2, 12), "n_pulls": st.integers(1, 40)}),
    "metarl/TabularMDP-v0": st.fixed_dictionaries({"n_states": st.integers(1, 12), "n_actions": st.integers(1, 6),
                                                   "horizon": st.integers(1, 15)}),
}


def random_actions(space: gymnasium.Space, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_steps, N, ...]`` actions in ``space`` (a batched space), 10% of Box entries at a bound."""
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n_steps, *space.shape)) + space.start
    assert isinstance(space, gymnasium.spaces.Box)
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    a = rng.uniform(low, high, size=(n_steps, *space.shape))
    at_bound = rng.random(a.shape) < 0.1
    a = np.where(at_bound, np.where(rng.random(a.shape) < 0.5, low, high), a)
    return a.astype(space.dtype)


def run(venv: gymnasium.vector.VectorEnv, tasks: list[Any], seed: int, actions: np.ndarray) -> list[tuple[Any, ...]]:
    obs, _ = venv.reset(seed=seed, options={"tasks": tasks})
    out: list[tuple[Any, ...]] = [(obs,)]
    for a in actions:
        obs, reward, terminated, truncated, _ = venv.step(a)
        out.append((obs.copy(), np.asarray(reward).copy(), terminated.copy(), truncated.copy()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_batched_twin_equals_single_envs_on_random_tasks_and_actions(env_id: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(kwargs=KWARGS[env_id], task_seed=st.integers(0, 2**32 - 1), reset_seed=st.integers(0, 2**31 - N),
           action_seed=st.integers(0, 2**32 - 1), split=st.sampled_from(["train", "test"]))
    def check(kwargs: dict[str, Any], task_seed: int, reset_seed: int, action_seed: int, split: str) -> None:
        batched = make_vector_env(env_id, N, **kwargs)
        sync = TaskSyncVectorEnv(lambda: make_env(env_id, **kwargs), num_envs=N,
                                 autoreset_mode=gymnasium.vector.AutoresetMode.NEXT_STEP)
        tasks = batched.sample_tasks(N, rng=np.random.default_rng(task_seed), split=split)  # type: ignore[attr-defined]
        assert len(tasks) == N and len(set(tasks)) > 1
        horizon = episode_horizon(batched)
        actions = random_actions(batched.action_space, horizon + horizon // 2 + 1, np.random.default_rng(action_seed))
        got = run(batched, tasks, reset_seed, actions)
        want = run(sync, tasks, reset_seed, actions)
        space = batched.single_observation_space
        for t, (g, w) in enumerate(zip(got, want, strict=True)):
            for x, y in zip(g, w, strict=True):
                assert np.shape(x) == np.shape(y), f"step {t}"
                np.testing.assert_array_equal(x, y, err_msg=f"{env_id} {kwargs} step {t}")
            assert all(g[0][i] in space for i in range(N)), f"observation outside the space at step {t}"
            if t:
                assert np.all(np.isfinite(g[1])), f"non-finite reward at step {t}"
        again = run(batched, tasks, reset_seed, actions)
        for g, a in zip(got, again, strict=True):
            for x, y in zip(g, a, strict=True):
                np.testing.assert_array_equal(x, y)
        ends = sum(int((s[2] | s[3]).sum()) for s in got[1:])
        assert ends >= N, "every column should end an episode within 1.5 horizons"
        batched.close()
        sync.close()

    check()
