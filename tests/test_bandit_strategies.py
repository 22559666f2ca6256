"""Classical bandit strategies (metarl.bandits): choices by hand, Gittins indices against independent
computations, play == play through BanditVectorEnv, and the benchmark's smoke test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metarl.bandits import (
    UCB1,
    EpsilonGreedy,
    Gittins,
    Greedy,
    RandomArm,
    Thompson,
    argmax_random_ties,
    default_gittins_gamma,
    exploration_profile,
    gittins_index,
    gittins_index_table,
    play,
    play_env,
)
from metarl.envs.bandit import BanditEnv, BanditTask, BanditVectorEnv
from metarl.rng import key_from_seed, uniform

ROOT = Path(__file__).resolve().parents[1]


def feed(strategy, history: list[tuple[int, float]], n_arms: int, n_pulls: int = 100) -> None:
    """Reset ``strategy`` for one bandit and replay ``[(arm, reward), ...]``."""
    strategy.reset(1, n_arms, n_pulls, np.random.default_rng(0))
    for arm, reward in history:
        strategy.update(np.array([arm]), np.array([reward]))


# History of 10 pulls: arm 0: 1, 1, 0 (s=2, f=1); arm 1: 0 (s=0, f=1); arm 2: 1, 1, 1, 1, 0, 0 (s=4, f=2).
HISTORY = [(0, 1.0), (0, 1.0), (0, 0.0), (1, 0.0), (2, 1.0), (2, 1.0), (2, 1.0), (2, 1.0), (2, 0.0), (2, 0.0)]


# --- oracle tests: choices computed by hand ---------------------------------------------------------------
def test_ucb1_indices_and_choice_by_hand():
    # Pull t = 11; with one pseudo-success and one pseudo-failure: mu_hat = (3/5, 1/3, 5/8), T = (5, 3, 8).
    # sqrt(2 ln 11 / T) = (0.979366, 1.264356, 0.774257).
    bonus = np.array([0.979366, 1.264356, 0.774257])
    means = np.array([0.6, 1 / 3, 0.625])
    for c, arm in [(0.0, 2), (0.5, 0), (2.0, 1)]:
        ucb = UCB1(c=c)
        feed(ucb, HISTORY, 3)
        np.testing.assert_allclose(ucb.indices()[0], means + c * bonus, atol=1e-6)
        assert ucb.select()[0] == arm
    # Auer et al.'s form: no pseudo-counts, untried arms first.
    auer = UCB1(c=1.0, prior=(0, 0))
    feed(auer, [(0, 1.0), (2, 0.0)], 4)
    assert auer.indices()[0, 1] == np.inf and auer.indices()[0, 3] == np.inf
    assert auer.indices()[0, 0] == pytest.approx(1.0 + math.sqrt(2 * math.log(3) / 1))
    assert auer.select()[0] in (1, 3)


def test_greedy_and_epsilon_greedy_by_hand():
    greedy = Greedy()
    feed(greedy, HISTORY, 3)
    np.testing.assert_allclose(greedy.mean_estimates()[0], [0.6, 1 / 3, 0.625])
    assert greedy.select()[0] == 2
    # After one success and one failure an arm (2/4 = 1/2) ties with untried arms: "first" keeps arm 0.
    first, rand = Greedy(tie_break="first"), Greedy()
    feed(first, [(0, 1.0), (0, 0.0)], 4)
    feed(rand, [(0, 1.0), (0, 0.0)], 4)
    assert all(first.select()[0] == 0 for _ in range(20))
    assert {int(rand.select()[0]) for _ in range(200)} == {0, 1, 2, 3}
    # epsilon = 1: uniformly random arms; epsilon = 0: greedy.
    eps = EpsilonGreedy(epsilon=1.0)
    eps.reset(4000, 4, 10, np.random.default_rng(1))
    counts = np.bincount(eps.select(), minlength=4)
    assert counts.min() > 850 and counts.max() < 1150
    assert EpsilonGreedy(epsilon=0.0).name == "epsilon_greedy" and Greedy().epsilon == 0.0


def test_thompson_takes_argmax_of_posterior_samples():
    ts = Thompson()
    feed(ts, HISTORY, 3)
    expected_rng = np.random.default_rng(5)
    ts.rng = np.random.default_rng(5)
    theta = expected_rng.beta(np.array([[3.0, 1.0, 5.0]]), np.array([[2.0, 2.0, 3.0]]))
    assert ts.select()[0] == int(np.argmax(theta))
    # Selection frequencies match the posterior probability that each arm is best (Beta(3,2) vs Beta(1,2) vs
    # Beta(5,3)), estimated with an independent Monte Carlo.
    ts.reset(20000, 3, 10, np.random.default_rng(0))
    ts.successes[:] = [2.0, 0.0, 4.0]
    ts.failures[:] = [1.0, 1.0, 2.0]
    freq = np.bincount(ts.select(), minlength=3) / 20000
    mc = np.random.default_rng(9).beta([3.0, 1.0, 5.0], [2.0, 2.0, 3.0], size=(200000, 3)).argmax(1)
    np.testing.assert_allclose(freq, np.bincount(mc, minlength=3) / 200000, atol=0.015)


def test_argmax_random_ties():
    rng = np.random.default_rng(0)
    values = np.tile([0.5, 0.9, 0.9, 0.1, 0.9], (3000, 1))
    picks = argmax_random_ties(values, rng)
    assert set(np.unique(picks)) == {1, 2, 4}
    assert np.bincount(picks, minlength=5)[[1, 2, 4]].min() > 900
    np.testing.assert_array_equal(argmax_random_ties(np.array([[0.0, 1.0], [3.0, -1.0]]), rng), [1, 0])


def test_random_arm_expected_reward():
    probs = np.random.default_rng(0).uniform(size=(2000, 5))
    result = play(RandomArm(), probs, 50, seed=0)
    # E[expected_reward] = n * mean(p) per bandit.
    diff = result.expected_reward - 50 * probs.mean(axis=1)
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(2000)


def test_play_rewards_follow_the_counter_rng():
    probs = np.array([[0.3, 0.7], [0.5, 0.5]])
    result = play(UCB1(c=0.3), probs, 20, seed=4)
    for b in range(2):
        key = key_from_seed(4 + b)
        expected = [float(uniform(key, t) < probs[b, a]) for t, a in enumerate(result.arms[b])]
        np.testing.assert_array_equal(result.rewards[b], expected)
    np.testing.assert_allclose(result.regret, 20 * probs.max(1) - np.take_along_axis(probs, result.arms, 1).sum(1))


def test_strategies_learn_the_obvious_bandit():
    probs = np.tile([0.05, 0.95, 0.1], (200, 1))
    for strategy in (Greedy(), EpsilonGreedy(0.05), UCB1(0.2), Thompson(), Gittins()):
        result = play(strategy, probs, 100, seed=0)
        assert (result.arms[:, -20:] == 1).mean() > 0.9, strategy


# --- Gittins indices --------------------------------------------------------------------------------------
def restart_index(a: float, b: float, gamma: float, depth: int) -> float:
    """Gittins index by Katehakis & Veinott's restart-in-state formulation, solved by value iteration.

    An independent method: V(x) = max(C(x), C(x0)) where C(x) = mu(x) + gamma * E[V(next)] and states with
    ``s + f = depth`` are absorbing with reward mu (the same truncation); the index is (1 - gamma) V(x0).
    """
    mus = [(a + s) / (a + b + m) for m in range(depth + 1) for s in range(m + 1)]
    pos = {}
    i = 0
    for m in range(depth + 1):
        for s in range(m + 1):
            pos[(s, m)] = i
            i += 1
    mu = np.array(mus)
    succ = np.array([pos[(s + 1, m + 1)] if m < depth else pos[(s, m)] for m in range(depth + 1) for s in range(m + 1)])
    fail = np.array([pos[(s, m + 1)] if m < depth else pos[(s, m)] for m in range(depth + 1) for s in range(m + 1)])
    absorbing = np.array([m == depth for m in range(depth + 1) for s in range(m + 1)])
    v = np.zeros_like(mu)
    for _ in range(int(np.log(1e-13) / np.log(gamma)) + 10):
        cont = mu + gamma * np.where(absorbing, v, mu * v[succ] + (1 - mu) * v[fail])
        v = np.maximum(cont, cont[0])
    return float((1 - gamma) * v[0])


def test_gittins_index_of_uniform_prior_matches_independent_methods():
    # gamma = 0.9 is the discount the strategy uses for trials of n = 10 pulls.
    gamma = default_gittins_gamma(10)
    assert gamma == pytest.approx(0.9)
    table = gittins_index_table(gamma, 9, depth=60)
    assert table.max_error < 1e-4
    reference = restart_index(1.0, 1.0, gamma, 60)
    assert abs(table.index[0, 0] - reference) <= table.max_error + 1e-9
    assert abs(gittins_index(1.0, 1.0, gamma, 60) - reference) < 1e-8
    assert reference == pytest.approx(0.7029, abs=5e-5)  # the commonly tabulated value for Beta(1, 1), gamma 0.9
    # A deeper state, against the restart formulation too.
    assert abs(table.index[3, 2] - restart_index(4.0, 3.0, gamma, 55)) <= table.max_error + 1e-9


def test_gittins_index_one_step_lookahead_by_hand():
    # depth 1: lam / (1 - g) = 1/2 + g * (1/2 * max(lam, 2/3) + 1/2 * max(lam, 1/3)) / (1 - g). For
    # 1/3 < lam < 2/3: lam = ((1 - g) / 2 + g / 3) / (1 - g / 2); g = 0.9 gives 0.35 / 0.55.
    expected = 0.35 / 0.55
    assert gittins_index(1.0, 1.0, 0.9, depth=1) == pytest.approx(expected, abs=1e-9)
    table = gittins_index_table(0.9, 0, depth=1)
    assert table.index[0, 0] == pytest.approx(expected, abs=table.max_error + 1e-12)


def test_gittins_zero_discount_is_the_posterior_mean():
    table = gittins_index_table(0.0, 6, prior=(2.0, 3.0))
    s, f = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    mean = (2.0 + s) / (5.0 + s + f)
    ok = s + f <= 6
    np.testing.assert_allclose(table.index[ok], mean[ok], atol=1e-12)
    assert np.isnan(table.index[~ok]).all() and table.max_error < 1e-12


def test_gittins_table_properties_and_spot_checks():
    table = gittins_index_table(0.99, 99)
    idx = table.index
    s, f = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
    ok = s + f <= 99
    assert np.isfinite(idx[ok]).all()
    # Above the posterior mean (the value of information), below 1; increasing in successes, decreasing in failures.
    assert (idx[ok] >= (1 + s[ok]) / (2 + s[ok] + f[ok]) - 1e-12).all() and (idx[ok] < 1).all()
    inc = idx[1:, :-1] - idx[:-1, :-1]
    dec = idx[:-1, 1:] - idx[:-1, :-1]
    both = (s[:-1, :-1] + f[:-1, :-1]) <= 98
    assert (inc[both] > 0).all() and (dec[both] < 0).all()
    assert table.max_error < 5e-4 and table.depth == 99 + 1 + 400
    for a, b in [(1, 1), (3, 10), (20, 5)]:
        assert abs(idx[a - 1, b - 1] - gittins_index(a, b, 0.99, table.depth - (a + b - 2))) <= table.max_error + 1e-9
    assert gittins_index_table(0.99, 99) is table  # cached


# --- equivalence: play == play through the env --------------------------------------------------------------
@pytest.mark.parametrize("make", [RandomArm, Greedy, lambda: Greedy(tie_break="first"), lambda: EpsilonGreedy(0.2),
                                  lambda: UCB1(0.3), lambda: UCB1(1.0, prior=(0, 0)), Thompson, Gittins])
def test_play_equals_play_through_vector_env(make):
    n_bandits, k, n_pulls = 12, 5, 30
    tasks = BanditEnv(n_arms=k).sample_tasks(n_bandits, np.random.default_rng(0), split="test")
    venv = BanditVectorEnv(n_bandits, n_arms=k, n_pulls=n_pulls, tasks=tasks)
    direct = play(make(), np.array([t.probs for t in tasks]), n_pulls, seed=7, rng=np.random.default_rng(3))
    via_env = play_env(make(), venv, seed=7, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(direct.arms, via_env.arms)
    np.testing.assert_array_equal(direct.rewards, via_env.rewards)


def test_play_equals_single_env_loop():
    task = BanditTask(probs=(0.2, 0.6, 0.4))
    direct = play(Thompson(), np.array([task.probs]), 25, seed=3, rng=np.random.default_rng(1))
    env = BanditEnv(n_arms=3, n_pulls=25, task=task)
    env.reset(seed=3)
    rewards = [env.step(int(a))[1] for a in direct.arms[0]]
    np.testing.assert_array_equal(direct.rewards[0], rewards)


# --- bad arguments ----------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="epsilon must be a float in"):
        EpsilonGreedy(epsilon=1.5)
    with pytest.raises(ValueError, match="c must be a finite float >= 0"):
        UCB1(c=-1.0)
    with pytest.raises(ValueError, match="prior pseudo-counts must be finite and > 0"):
        Thompson(prior=(0.0, 1.0))
    with pytest.raises(ValueError, match="tie_break must be"):
        Greedy(tie_break="last")
    with pytest.raises(ValueError, match="gamma must be a float in"):
        gittins_index_table(1.0, 10)
    with pytest.raises(ValueError, match="depth must be an int > max_pulls"):
        gittins_index_table(0.9, 10, depth=5)
    with pytest.raises(ValueError, match="probs must have shape"):
        play(Greedy(), np.array([0.1, 0.2]), 10, seed=0)
    with pytest.raises(ValueError, match="n_pulls must be an int >= 1"):
        play(Greedy(), np.array([[0.1, 0.2]]), 0, seed=0)
    with pytest.raises(TypeError, match="Generator"):
        Greedy().reset(1, 2, 3, rng=0)


# --- benchmark smoke test ---------------------------------------------------------------------------------
def test_bandit_baselines_benchmark_quick(tmp_path):
    out = tmp_path / "bandits.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bandit_baselines.py"), "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert "provenance" in data and data["setup"]["quick"] is True
    setting = {(s["n_pulls"], s["n_arms"]): s for s in data["settings"]}[(100, 5)]
    results = setting["results"]
    assert results["gittins"]["paper"] == 78.3 and results["random"]["n"] == 100
    assert results["gittins"]["mean"] > results["random"]["mean"] + 15
    assert data["target"]["checks"]
    assert "| n=100, k=5 |" in proc.stdout


def test_exploration_profile_by_hand() -> None:
    # bandit 0: tries arms 0, 1 in its first 2 pulls, 3 arms in all; second half (pulls 3-5) all on arm 2, the best.
    # bandit 1: only arm 3; best is arm 0, so its second half is off the best arm.
    # bandit 2: two best arms (1, 2); second half 1, 0, 2 ties arms 0, 1, 2 and the lowest index, 0, is not best.
    arms = np.array([[0, 1, 1, 2, 2, 2], [3, 3, 3, 3, 3, 3], [2, 3, 2, 1, 0, 2]])
    probs = np.array([[0.1, 0.2, 0.9, 0.0], [0.5, 0.1, 0.2, 0.3], [0.3, 0.8, 0.8, 0.1]])
    got = exploration_profile(arms, probs, first=2)
    np.testing.assert_array_equal(got["arms_tried_first"], [2, 1, 2])
    np.testing.assert_array_equal(got["arms_tried"], [3, 1, 4])
    np.testing.assert_allclose(got["best_arm_late"], [1.0, 0.0, 2 / 3])
    np.testing.assert_array_equal(got["off_best_late"], [0.0, 1.0, 1.0])
    # first longer than the trial: every pull counts
    np.testing.assert_array_equal(exploration_profile(arms, probs, first=50)["arms_tried_first"], [3, 1, 4])


@pytest.mark.parametrize(("arms", "message"), [
    (np.zeros((2, 5), dtype=np.int64), r"one row per bandit"),
    (np.zeros((3, 1), dtype=np.int64), r"n >= 2"),
    (np.zeros((3, 5)), r"integer array"),
    (np.full((3, 5), 4), r"in \[0, 4\)"),
])
def test_exploration_profile_rejects_bad_arms(arms: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exploration_profile(arms, np.full((3, 4), 0.5))
