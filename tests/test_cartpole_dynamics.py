"""CartPoleDynamics: hand-computed physics, the task family, the batched twin and the gap benchmark."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from metarl.envs.cartpole_dynamics import (
    DEFAULT_TASK,
    MAX_KICK,
    MIN_AUTHORITY,
    OOD_RANGES,
    PARAM_NAMES,
    TAU,
    TRAIN_RANGES,
    CartPoleDynamicsEnv,
    CartPoleDynamicsVectorEnv,
    CartPoleTask,
    coefficients,
    euler_step,
    in_training_box,
    lqr_actions,
    lqr_gains,
    oracle_features,
)
from metarl.tasks import task_split

REPO = Path(__file__).resolve().parents[1]
TASK = CartPoleTask(gravity=10.0, masscart=1.5, masspole=0.5, length=0.75, force_mag=6.0, action_sign=-1)


def _set_state(env: CartPoleDynamicsEnv, state: tuple[float, float, float, float]) -> None:
    env.reset(seed=0)
    env._state = state


def _textbook_step(s: tuple[float, ...], force: float, t: CartPoleTask) -> np.ndarray:
    """Barto et al. (1983) in their original arrangement (not the divided-through one of euler_step)."""
    x, x_dot, th, th_dot = s
    m = t.masscart + t.masspole
    temp = (force + t.masspole * t.length * th_dot**2 * math.sin(th)) / m
    th_acc = (t.gravity * math.sin(th) - math.cos(th) * temp) / (
        t.length * (4.0 / 3.0 - t.masspole * math.cos(th) ** 2 / m))
    x_acc = temp - t.masspole * t.length * th_acc * math.cos(th) / m
    return np.array([x + TAU * x_dot, x_dot + TAU * x_acc, th + TAU * th_dot, th_dot + TAU * th_acc])


# ---------------------------------------------------------------------------------------------- oracle tests
def test_one_euler_step_from_upright_by_hand() -> None:
    # Pole upright and still: sin θ = 0, cos θ = 1. M = 2, F = -6 (action 1 with sign -1), so
    # temp = -3, θ̈ = 3 / (0.75 (4/3 - 0.5/2)) = 48/13, ẍ = -3 - (0.5 · 0.75 / 2) · 48/13 = -48/13.
    env = CartPoleDynamicsEnv(task=TASK)
    _set_state(env, (0.1, 0.2, 0.0, 0.0))
    obs, reward, terminated, truncated, info = env.step(1)
    expected = np.array([0.1 + 0.02 * 0.2, 0.2 - 0.02 * 48 / 13, 0.0, 0.02 * 48 / 13])
    np.testing.assert_allclose(np.array(env._state), expected, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(obs, expected.astype(np.float32), rtol=0, atol=0)
    assert (reward, terminated, truncated, info) == (1.0, False, False, {})


def test_euler_step_matches_the_textbook_equations_off_upright() -> None:
    env = CartPoleDynamicsEnv(task=TASK)
    state = (-0.3, 0.7, 0.15, -1.2)
    for action, force in ((0, 6.0), (1, -6.0)):
        _set_state(env, state)
        env.step(action)
        np.testing.assert_allclose(np.array(env._state), _textbook_step(state, force, TASK), rtol=1e-13)


def test_default_task_reproduces_gymnasium_cartpole_v1() -> None:
    ours = CartPoleDynamicsEnv(horizon=500)
    ref: Any = gymnasium.make("CartPole-v1").unwrapped
    lengths = []
    for episode in range(6):
        ours.reset(seed=episode)
        ref.reset(seed=0)
        rng = np.random.default_rng(episode)
        for _ in range(500):
            s = ours._state
            ref.state = np.array(s)  # compare single steps: rounding differences grow on an unstable system
            action = int(rng.integers(2)) if episode % 2 else int(s[2] + 0.3 * s[3] + 0.01 * s[1] > 0)
            _, _, term_a, trunc_a, _ = ours.step(action)
            _, _, term_b, _, _ = ref.step(action)
            np.testing.assert_allclose(np.array(ours._state), ref.state, rtol=1e-13, atol=1e-15)
            assert term_a == term_b
            if term_a or trunc_a:
                lengths.append(ours._steps)
                break
    assert max(lengths) == 500  # the heuristic controller balances the classic pole to the horizon


def test_derived_quantities_are_recomputed_when_a_task_is_set() -> None:
    env = CartPoleDynamicsEnv()
    assert env.total_mass == pytest.approx(1.1) and env.polemass_length == pytest.approx(0.05)
    env.set_task(TASK)
    assert env.total_mass == 2.0 and env.polemass_length == 0.375
    assert env.coefficients.push_right == -3.0 and env.coefficients.pml_per_mass == 0.1875
    # The dynamics after set_task are those of a fresh env built with the task (RLlib's CartPoleMassEnv
    # keeps the stale total mass here).
    fresh = CartPoleDynamicsEnv(task=TASK)
    for e in (env, fresh):
        _set_state(e, (0.0, 0.1, 0.05, 0.2))
        e.step(1)
    assert env._state == fresh._state

    venv = CartPoleDynamicsVectorEnv(2)
    venv.set_tasks([TASK, DEFAULT_TASK])
    np.testing.assert_allclose(venv.total_mass, [2.0, 1.1])
    np.testing.assert_allclose(venv.polemass_length, [0.375, 0.05])
    np.testing.assert_allclose(venv.coefficients.push_right, [-3.0, 10 / 1.1])


def test_action_sign_swaps_the_actions() -> None:
    plus = CartPoleDynamicsEnv(task=CartPoleTask(action_sign=1))
    minus = CartPoleDynamicsEnv(task=CartPoleTask(action_sign=-1))
    for a_plus, a_minus in ((1, 0), (0, 1)):
        plus.reset(seed=4)
        minus.reset(seed=4)
        for _ in range(5):
            obs_p, *_ = plus.step(a_plus)
            obs_m, *_ = minus.step(a_minus)
            assert np.array_equal(obs_p, obs_m)
    # Action 1 pushes the cart right with sign +1 and left with sign -1.
    for env, direction in ((plus, 1.0), (minus, -1.0)):
        _set_state(env, (0.0, 0.0, 0.0, 0.0))
        obs, *_ = env.step(1)
        assert np.sign(obs[1]) == direction


def test_oracle_observation_appends_normalised_parameters() -> None:
    # Default task: g 9.8 in [5, 15] -> -0.04; m_c 1 in [0.5, 2] -> -1/3; m_p 0.1 in [0.05, 0.5] -> -7/9;
    # l 0.5 in [0.25, 1] -> -1/3; force 10 in [5, 15] -> 0; sign +1.
    expected = [-0.04, -1 / 3, -7 / 9, -1 / 3, 0.0, 1.0]
    np.testing.assert_allclose(oracle_features([DEFAULT_TASK])[0], expected, atol=1e-12)
    plain, oracle = CartPoleDynamicsEnv(), CartPoleDynamicsEnv(oracle=True)
    assert oracle.observation_space.shape == (10,) and plain.observation_space.shape == (4,)
    o_plain, _ = plain.reset(seed=1)
    o_oracle, _ = oracle.reset(seed=1)
    assert o_oracle.dtype == np.float32
    assert np.array_equal(o_oracle[:4], o_plain)
    np.testing.assert_allclose(o_oracle[4:], expected, atol=1e-6)
    o_oracle, _ = oracle.reset(options={"task": TASK})
    np.testing.assert_allclose(o_oracle[4:], oracle_features([TASK])[0], atol=1e-6)
    assert o_oracle[-1] == -1.0
    tasks = plain.sample_tasks(500, np.random.default_rng(0))
    feats = oracle_features(tasks)
    assert feats.shape == (500, 6) and np.all(np.abs(feats) <= 1.0)


# ---------------------------------------------------------------------------------------------- task family
def test_task_json_round_trip_and_validation() -> None:
    t = CartPoleTask(gravity=np.float64(1 / 3), masscart=1, masspole=0.2, length=0.4, force_mag=7.5,
                     action_sign=np.int64(-1))
    assert type(t.gravity) is float and type(t.masscart) is float and type(t.action_sign) is int
    back = CartPoleTask.from_json(t.to_json())
    assert back == t and hash(back) == hash(t)
    assert json.loads(t.to_json())["family"] == "cartpole_dynamics"
    assert CartPoleTask() == DEFAULT_TASK
    with pytest.raises(ValueError, match="masspole must be a finite number > 0, got -0.1"):
        CartPoleTask(masspole=-0.1)
    with pytest.raises(ValueError, match="length must be a finite number > 0"):
        CartPoleTask(length=math.inf)
    with pytest.raises(ValueError, match="action_sign must be the int"):
        CartPoleTask(action_sign=0)
    with pytest.raises(ValueError, match="action_sign must be the int"):
        CartPoleTask(action_sign=True)
    with pytest.raises(TypeError, match="gravity must be a real number"):
        CartPoleTask(gravity="9.8")  # type: ignore[arg-type]


def test_splits_are_disjoint_and_follow_the_documented_ranges() -> None:
    env = CartPoleDynamicsEnv()
    train = env.sample_tasks(400, np.random.default_rng(0), "train")
    test = env.sample_tasks(200, np.random.default_rng(1), "test")
    ood = env.sample_tasks(200, np.random.default_rng(2), "ood")
    assert all(task_split(t) == "train" for t in train) and all(task_split(t) == "test" for t in test)
    assert not set(train) & set(test)
    assert all(in_training_box(t) for t in train + test)
    for name in PARAM_NAMES:
        values = np.array([getattr(t, name) for t in ood])
        assert OOD_RANGES[name][0] <= values.min() and values.max() <= OOD_RANGES[name][1]
    assert not any(in_training_box(t) for t in ood)
    assert all(t.authority >= MIN_AUTHORITY and t.kick <= MAX_KICK for t in ood)
    signs = np.array([t.action_sign for t in train + test + ood])
    assert set(signs.tolist()) == {-1, 1} and 0.4 < np.mean(signs == 1) < 0.6
    with pytest.raises(ValueError, match="split must be one of"):
        env.sample_tasks(1, np.random.default_rng(0), "val")


def test_training_box_extremes_match_the_ood_limits() -> None:
    lo = {n: TRAIN_RANGES[n][0] for n in PARAM_NAMES}
    hi = {n: TRAIN_RANGES[n][1] for n in PARAM_NAMES}
    weakest = CartPoleTask(**{**hi, "force_mag": lo["force_mag"], "length": lo["length"]})
    jerkiest = CartPoleTask(**{**lo, "force_mag": hi["force_mag"], "gravity": hi["gravity"]})
    assert weakest.authority == pytest.approx(MIN_AUTHORITY) and MIN_AUTHORITY == pytest.approx(5 / 37.5)
    assert jerkiest.kick == pytest.approx(MAX_KICK)
    tasks = CartPoleDynamicsEnv().sample_tasks(300, np.random.default_rng(3))
    assert min(t.authority for t in tasks) >= MIN_AUTHORITY and max(t.kick for t in tasks) <= MAX_KICK


def test_every_task_is_solvable_by_a_controller_that_knows_it() -> None:
    corners = [CartPoleTask(**dict(zip(PARAM_NAMES, values, strict=True)), action_sign=sign)
               for values in itertools.product(*(TRAIN_RANGES[n] for n in PARAM_NAMES)) for sign in (1, -1)]
    ood = CartPoleDynamicsEnv().sample_tasks(64, np.random.default_rng(0), "ood")
    tasks = (corners + ood) * 2
    gains = lqr_gains(tasks)
    env = CartPoleDynamicsVectorEnv(len(tasks), horizon=200)
    obs, _ = env.reset(seed=0, options={"tasks": tasks})
    for t in range(200):
        obs, rewards, terminated, truncated, _ = env.step(lqr_actions(obs, gains, tasks))
        assert not terminated.any(), [tasks[i] for i in np.flatnonzero(terminated)][:3]
        assert truncated.all() == (t == 199)


# ---------------------------------------------------------------------------------------------- env contract
def test_determinism_under_seed() -> None:
    env = CartPoleDynamicsEnv()
    first = [env.reset(seed=7)[0]] + [env.step(i % 2)[0] for i in range(5)]
    env.reset(seed=8)
    again = [env.reset(seed=7)[0]] + [env.step(i % 2)[0] for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(env.reset(seed=8)[0], first[0])
    # Unseeded resets continue the stream deterministically.
    env.reset(seed=7)
    a = env.reset()[0]
    env.reset(seed=7)
    assert np.array_equal(env.reset()[0], a) and not np.array_equal(a, first[0])
    env.reset(seed=3)
    tasks = env.sample_tasks(3)
    env.reset(seed=3)
    assert env.sample_tasks(3) == tasks
    # Initial states lie in [-0.05, 0.05)^4.
    starts = np.array([env.reset(seed=s)[0] for s in range(200)])
    assert starts.min() >= -0.05 and starts.max() < 0.05 and starts.std() > 0.02


def test_horizon_truncates_and_stepping_after_the_end_fails() -> None:
    env = CartPoleDynamicsEnv(horizon=3)
    env.reset(seed=0)
    assert [env.step(i % 2)[2:4] for i in range(3)] == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    with pytest.raises(RuntimeError, match="call reset"):
        CartPoleDynamicsEnv().step(0)
    env.reset()
    for _ in range(3):
        *_, terminated, truncated, _ = env.step(1)  # pushing one way for 3 steps does not fail
    assert truncated and not terminated
    env = CartPoleDynamicsEnv()
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        _, reward, terminated, truncated, _ = env.step(1)
        assert reward == 1.0
        if terminated:
            break
    assert not truncated and 5 < steps < 40 and abs(env._state[2]) > 12 * math.pi / 180


@pytest.mark.parametrize("oracle", [False, True])
def test_env_checkers(oracle: bool) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The velocity (and oracle) bounds are infinite, as in Gymnasium's own CartPole.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        gym_check(CartPoleDynamicsEnv(oracle=oracle, task=TASK), skip_render_check=True)
        sb3_check(CartPoleDynamicsEnv(oracle=oracle, task=TASK), warn=True)


def test_gymnasium_make_and_make_vec() -> None:
    env = gymnasium.make("metarl/CartPoleDynamics-v0", horizon=50, oracle=True)
    assert isinstance(env.unwrapped, CartPoleDynamicsEnv) and env.unwrapped.horizon == 50
    obs, _ = env.reset(seed=0, options={"task": TASK})
    assert obs.shape == (10,) and env.unwrapped.get_task() == TASK
    env.step(env.action_space.sample())
    venv = gymnasium.make_vec("metarl/CartPoleDynamics-v0", num_envs=5, horizon=50)
    assert isinstance(venv, CartPoleDynamicsVectorEnv) and venv.num_envs == 5 and venv.horizon == 50
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (5, 4) and obs.dtype == np.float32 and obs.flags.c_contiguous
    assert venv.observation_space.shape == (5, 4) and venv.action_space.shape == (5,)
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    venv.step(venv.action_space.sample())
    sync = gymnasium.make_vec("metarl/CartPoleDynamics-v0", num_envs=2, vectorization_mode="sync")
    assert isinstance(sync, SyncVectorEnv)


@pytest.mark.parametrize("oracle", [False, True])
def test_batched_env_equals_sync_vector_env_across_autoresets(oracle: bool) -> None:
    n, horizon = 6, 25
    tasks = CartPoleDynamicsEnv().sample_tasks(n, np.random.default_rng(5)) + [TASK]
    n = len(tasks)
    def make(task: CartPoleTask) -> Callable[[], CartPoleDynamicsEnv]:
        return lambda: CartPoleDynamicsEnv(task=task, horizon=horizon, oracle=oracle)

    sync = SyncVectorEnv([make(t) for t in tasks])
    batched = CartPoleDynamicsVectorEnv(n, horizon=horizon, oracle=oracle)
    batched.set_tasks(tasks)
    rng = np.random.default_rng(0)
    ended = np.zeros(n, dtype=int)
    for phase, seed in enumerate((11, None, [3, None, 5, 6, None, 8, 9])):
        obs_a, _ = sync.reset(seed=seed)
        obs_b, _ = batched.reset(seed=seed)
        assert np.array_equal(obs_a, obs_b)
        for _ in range(400):
            # A biased coin keeps some episodes alive until the horizon (truncations as well as failures).
            p_right = np.where(obs_a[:, 2] + 0.5 * obs_a[:, 3] > 0, 0.9, 0.1)
            actions = (rng.random(n) < p_right).astype(np.int64)
            if phase == 0:
                actions = rng.integers(0, 2, n)
            out_a, out_b = sync.step(actions), batched.step(actions)
            for a, b in zip(out_a[:4], out_b[:4], strict=True):
                assert np.array_equal(a, b)
            obs_a = out_a[0]
            ended += out_a[2] | out_a[3]
    assert ended.min() > 2 * 16  # several refills of the batched env's buffer of initial states
    assert batched.get_tasks() == tasks


def test_batched_reset_seeds_and_tasks() -> None:
    venv = CartPoleDynamicsVectorEnv(3)
    obs, _ = venv.reset(seed=10)
    singles = [CartPoleDynamicsEnv().reset(seed=10 + i)[0] for i in range(3)]
    assert np.array_equal(obs, np.stack(singles))
    obs, _ = venv.reset(seed=[12, 10, 11], options={"tasks": [TASK] * 3})
    assert np.array_equal(obs, np.stack([singles[2], singles[0], singles[1]]))
    assert venv.get_tasks() == [TASK] * 3
    tasks = venv.sample_tasks(3, split="test")
    assert len(tasks) == 3 and all(task_split(t) == "test" for t in tasks)
    obs, _ = venv.reset(seed=np.int64(10))
    assert np.array_equal(obs, np.stack(singles))
    # A first unseeded reset draws a key per sub-env; the next unseeded reset continues each stream.
    fresh = CartPoleDynamicsVectorEnv(3)
    first, _ = fresh.reset()
    second, _ = fresh.reset()
    assert np.all(np.abs(first) < 0.05) and len({tuple(o) for o in first}) == 3
    assert not np.array_equal(first, second)


def test_bad_arguments_raise_helpful_errors() -> None:
    with pytest.raises(ValueError, match=r"horizon must be an int >= 1 \(steps per episode\), got 0"):
        CartPoleDynamicsEnv(horizon=0)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        CartPoleDynamicsEnv(horizon=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="oracle must be a bool"):
        CartPoleDynamicsEnv(oracle="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="render_mode must be None"):
        CartPoleDynamicsEnv(render_mode="human")
    with pytest.raises(TypeError, match="expected a CartPoleTask, got dict"):
        CartPoleDynamicsEnv(task={"gravity": 9.8})  # type: ignore[arg-type]
    env = CartPoleDynamicsEnv()
    with pytest.raises(TypeError, match="expected a CartPoleTask"):
        env.set_task(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"tasks": [TASK]})
    env.reset(seed=0)
    for bad in (2, -1, 0.5, True, np.array([1])):
        with pytest.raises(ValueError, match="action must be 0 or 1"):
            env.step(bad)  # type: ignore[arg-type]
    env.step(np.int64(1))
    env.step(np.array(0))

    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        CartPoleDynamicsVectorEnv(0)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        CartPoleDynamicsVectorEnv(2, horizon=-5)
    venv = CartPoleDynamicsVectorEnv(2)
    with pytest.raises(ValueError, match=r"one task per sub-env \(2\), got 1"):
        venv.set_tasks([TASK])
    with pytest.raises(TypeError, match="expected a CartPoleTask"):
        venv.set_tasks([TASK, "x"])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="call reset"):
        venv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="the batched env takes 'tasks'"):
        venv.reset(options={"task": TASK})
    with pytest.raises(ValueError, match="list of 2 ints/None, got 3 seeds"):
        venv.reset(seed=[1, 2, 3])
    venv.reset(seed=0)
    bad_actions: list[Any] = [np.array([0, 2]), np.array([0, -1]), np.zeros(3, dtype=int),
                              np.array([0.0, 1.0]), [True, False]]
    for bad in bad_actions:
        with pytest.raises(ValueError, match="actions must be an int array of shape"):
            venv.step(bad)


def test_euler_step_on_arrays_equals_floats() -> None:
    tasks = CartPoleDynamicsEnv().sample_tasks(5, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    states = rng.uniform(-0.2, 0.2, size=(5, 4))
    c = coefficients(*(np.array([getattr(t, n) for t in tasks]) for n in PARAM_NAMES),
                     np.array([float(t.action_sign) for t in tasks]))
    batched = euler_step(*states.T, c.push_right, c)
    for i, t in enumerate(tasks):
        ci = coefficients(t.gravity, t.masscart, t.masspole, t.length, t.force_mag, float(t.action_sign))
        single = euler_step(*states[i], ci.push_right, ci, sin=math.sin, cos=math.cos)
        assert tuple(float(b[i]) for b in batched) == single


# ---------------------------------------------------------------------------------------------- benchmark
def test_gap_benchmark_quick_smoke(tmp_path: Path) -> None:
    """The benchmark's ``--quick`` run (about 4 s, so not marked slow) writes the JSON it documents."""
    out = tmp_path / "gap.json"
    script = REPO / "benchmarks" / "cartpole_gap.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], check=True, cwd=REPO,
                   capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert {"setup", "results", "note", "provenance"} <= set(result)
    assert {"random", "robust", "oracle"} <= set(result["results"]["test"])
