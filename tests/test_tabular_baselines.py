"""Classical tabular-MDP strategies (metarl.tabular): backward induction against enumerating every policy,
the conjugate posterior by hand and its sampling law, equalities between strategies, trials replayed through
the env, bad input, and the benchmark's smoke test."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metarl.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv
from metarl.tabular import (
    BEB,
    PSRL,
    UCRL2,
    EpsilonGreedy,
    Greedy,
    Myopic,
    OptimisticPSRL,
    Posterior,
    RandomAction,
    TabularPrior,
    episode_values,
    optimistic_transitions,
    plan,
    play_trials,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny_mdp() -> tuple[np.ndarray, np.ndarray]:
    """2 states x 2 actions: action 1 in state 0 pays less now but leads to the rich state 1."""
    mu = np.array([[1.0, 0.2], [3.0, -1.0]])
    p = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]])
    return mu, p


def policy_value(mu: np.ndarray, p: np.ndarray, horizon: int, actions: np.ndarray) -> float:
    """Expected return from state 0 of the time-dependent policy ``actions[t, s]`` (or action distributions
    ``actions[t, s, a]``), by pushing the state distribution forward."""
    dist = np.zeros(mu.shape[0])
    dist[0] = 1.0
    total = 0.0
    for t in range(horizon):
        pi = actions[t] if actions.ndim == 3 else np.eye(mu.shape[1])[actions[t]]  # [S, A]
        total += float(np.sum(dist[:, None] * pi * mu))
        dist = np.einsum("s,sa,san->n", dist, pi, p)
    return total


def test_plan_equals_the_best_of_every_deterministic_policy():
    mu, p = tiny_mdp()
    horizon = 3
    values = [policy_value(mu, p, horizon, np.array(a).reshape(horizon, 2))
              for a in itertools.product((0, 1), repeat=2 * horizon)]
    q = plan(mu, p, horizon)
    assert q.shape == (horizon, 2, 2)
    assert q[0, 0].max() == pytest.approx(max(values), abs=1e-12)
    greedy = q.argmax(axis=-1)  # [T, S], the optimal time-dependent policy
    assert policy_value(mu, p, horizon, greedy) == pytest.approx(max(values), abs=1e-12)
    # By hand, last step: Q_2 = mu; one step earlier, Q_1(0, 1) = 0.2 + 0.2 * 1.0 + 0.8 * 3.0.
    np.testing.assert_allclose(q[2], mu)
    assert q[1, 0, 1] == pytest.approx(0.2 + 0.2 * 1.0 + 0.8 * 3.0)


def test_episode_values_optimal_and_random_against_enumeration():
    mu, p = tiny_mdp()
    optimal, random = episode_values(mu, p, 4)
    best = max(policy_value(mu, p, 4, np.array(a).reshape(4, 2)) for a in itertools.product((0, 1), repeat=8))
    assert optimal == pytest.approx(best, abs=1e-12)
    assert random == pytest.approx(policy_value(mu, p, 4, np.full((4, 2, 2), 0.5)), abs=1e-12)


def test_plan_batches_over_leading_dimensions():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4, 5, 2))
    p = rng.dirichlet(np.ones(5), size=(3, 4, 5, 2))
    q = plan(mu, p, 6)
    assert q.shape == (6, 3, 4, 5, 2)
    for i, j in itertools.product(range(3), range(4)):
        np.testing.assert_allclose(q[:, i, j], plan(mu[i, j], p[i, j], 6), rtol=0, atol=1e-12)


def test_posterior_update_by_hand():
    post = Posterior(TabularPrior(), n_mdps=1, n_states=2, n_actions=2)
    for s, a, r, s2 in [(0, 1, 2.0, 1), (0, 1, 0.0, 1), (1, 0, 3.0, 0)]:
        post.update(np.array([s]), np.array([a]), np.array([r]), np.array([s2]))
    # mean = (tau0 m0 + tau R) / (tau0 + tau n) with m0 = tau0 = tau = 1
    np.testing.assert_allclose(post.mean_rewards()[0], [[1.0, (1 + 2.0) / 3], [(1 + 3.0) / 2, 1.0]])
    np.testing.assert_allclose(post.reward_precision()[0], [[1.0, 3.0], [2.0, 1.0]])
    # Dirichlet(1 + C) mean: (1 + C) / (2 + n)
    np.testing.assert_allclose(post.mean_transitions()[0, 0, 1], [1 / 4, 3 / 4])
    np.testing.assert_allclose(post.mean_transitions()[0, 1, 0], [2 / 3, 1 / 3])
    np.testing.assert_allclose(post.mean_transitions()[0, 0, 0], [1 / 2, 1 / 2])
    other = Posterior(TabularPrior(reward_mean=0.0, reward_precision=2.0, noise_precision=0.5, dirichlet=0.5), 1, 2, 2)
    other.update(np.array([0]), np.array([0]), np.array([4.0]), np.array([0]))
    assert other.mean_rewards()[0, 0, 0] == pytest.approx((2.0 * 0.0 + 0.5 * 4.0) / (2.0 + 0.5))
    np.testing.assert_allclose(other.mean_transitions()[0, 0, 0], [1.5 / 2.0, 0.5 / 2.0])


def test_posterior_samples_follow_the_posterior():
    post = Posterior(TabularPrior(), n_mdps=1, n_states=3, n_actions=1)
    for r, s2 in [(2.0, 1), (1.0, 1), (0.5, 2)]:
        post.update(np.array([0]), np.array([0]), np.array([r]), np.array([s2]))
    k = 40000
    rewards, transitions = post.sample(np.random.default_rng(0), k)
    assert rewards.shape == (k, 1, 3, 1) and transitions.shape == (k, 1, 3, 1, 3)
    mean, var = post.mean_rewards()[0, 0, 0], 1.0 / post.reward_precision()[0, 0, 0]  # 4.5 / 4, 1 / 4
    draws = rewards[:, 0, 0, 0]
    assert abs(draws.mean() - mean) < 5 * np.sqrt(var / k)
    assert draws.var() == pytest.approx(var, rel=0.03)
    alpha = np.array([1.0, 3.0, 2.0])  # Dirichlet(1 + counts)
    rows = transitions[:, 0, 0, 0]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    expected_var = alpha / alpha.sum() * (1 - alpha / alpha.sum()) / (alpha.sum() + 1)
    assert np.all(np.abs(rows.mean(axis=0) - alpha / alpha.sum()) < 5 * np.sqrt(expected_var / k))
    np.testing.assert_allclose(rows.var(axis=0), expected_var, rtol=0.05)


def concentrated(mu: np.ndarray, p: np.ndarray, visits: float = 1e9, strategy: Greedy | Myopic | None = None):
    """A strategy (default greedy) whose posterior has seen ``visits`` exact steps of every pair of the MDP."""
    strategy = strategy or Greedy()
    strategy.reset(1, *mu.shape, horizon=3, rng=np.random.default_rng(0))
    post = strategy.posterior
    post.visits[0] = visits
    post.reward_sums[0] = mu * visits
    post.next_counts[0] = p * visits
    return strategy


def test_greedy_on_a_certain_posterior_plans_the_true_mdp():
    mu, p = tiny_mdp()
    np.testing.assert_allclose(concentrated(mu, p).q_values()[:, 0], plan(mu, p, 3), atol=1e-6)


def test_myopic_takes_the_best_immediate_reward_and_greedy_plans_past_it():
    mu, p = tiny_mdp()
    myopic = concentrated(mu, p, strategy=Myopic()).q_values()[:, 0]
    # Every step values (s, a) by its mean reward alone: backward induction with a horizon of one step.
    np.testing.assert_allclose(myopic, np.broadcast_to(plan(mu, p, 1)[0], (3, 2, 2)), atol=1e-6)
    assert myopic[0, 0].argmax() == 0  # 1.0 now in state 0 ...
    assert concentrated(mu, p).q_values()[0, 0, 0].argmax() == 1  # ... but 0.2 leads to the rich state 1
    # An untried pair is worth the prior mean; a visited one the conjugate posterior mean.
    fresh = Myopic()
    fresh.reset(1, 2, 2, horizon=3, rng=np.random.default_rng(0))
    fresh.observe(np.array([0]), np.array([1]), np.array([3.0]), np.array([1]))
    np.testing.assert_allclose(fresh.q_values()[0, 0], [[1.0, (1.0 + 3.0) / 2], [1.0, 1.0]])


def test_strategy_equalities():
    rng_tasks = np.random.default_rng(3)
    tasks = TabularMDPEnv(n_states=4, n_actions=3).sample_tasks(16, rng_tasks)
    venv = TabularMDPVectorEnv(16, n_states=4, n_actions=3, horizon=5, tasks=tasks)
    # beta = 0 and epsilon = 0 are greedy (the same tie-breaking draws); one optimistic sample is PSRL (the same
    # posterior draws).
    pairs = [(BEB(beta=0.0), Greedy()), (EpsilonGreedy(epsilon=0.0), Greedy()), (OptimisticPSRL(samples=1), PSRL()),
             (BEB(beta=0.0, replan="step"), Greedy(replan="step"))]
    for a, b in pairs:
        ra = play_trials(a, venv, 4, seed=1)
        rb = play_trials(b, venv, 4, seed=1)
        np.testing.assert_array_equal(ra.actions, rb.actions)
        np.testing.assert_array_equal(ra.episode_returns, rb.episode_returns)


class CountingGreedy(Greedy):
    def reset(self, *args, **kwargs):
        super().reset(*args, **kwargs)
        self.plans = 0

    def q_values(self):
        self.plans += 1
        return super().q_values()


@pytest.mark.parametrize("replan, expected", [("episode", 3), ("step", 3 * 5)])
def test_replanning_schedule(replan, expected):
    venv = TabularMDPVectorEnv(2, horizon=5)
    strategy = CountingGreedy(replan=replan)
    play_trials(strategy, venv, 3, seed=0)
    assert strategy.plans == expected


def test_play_trials_replays_through_the_env():
    tasks = TabularMDPEnv().sample_tasks(8, np.random.default_rng(1), split="test")
    venv = TabularMDPVectorEnv(8, tasks=tasks)
    result = play_trials(EpsilonGreedy(epsilon=0.2), venv, 3, seed=5)
    assert result.episode_returns.shape == (8, 3) and result.actions.shape == (8, 3, 10)
    assert np.all(result.states[:, :, 0] == 0)  # every episode starts in state 0
    # Replay the recorded actions through a fresh env with the same seed: same states and rewards.
    fresh = TabularMDPVectorEnv(8, tasks=tasks)
    _, info = fresh.reset(seed=5)
    for episode in range(3):
        if episode:
            _, _, _, _, info = fresh.step(np.zeros(8, dtype=np.int64))
        total = np.zeros(8)
        for t in range(10):
            np.testing.assert_array_equal(info["state"], result.states[:, episode, t])
            _, reward, _, _, info = fresh.step(result.actions[:, episode, t])
            total += reward
        np.testing.assert_allclose(total, result.episode_returns[:, episode], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.total_reward, result.episode_returns.sum(axis=1))


def test_random_and_greedy_on_many_mdps():
    tasks = TabularMDPEnv().sample_tasks(500, np.random.default_rng(2), split="test")
    venv = TabularMDPVectorEnv(500, tasks=tasks)
    exact_random = np.mean([episode_values(*t.arrays(), 10)[1] for t in tasks]) * 5
    random = play_trials(RandomAction(), venv, 5, seed=0).total_reward
    assert abs(random.mean() - exact_random) < 4 * random.std() / np.sqrt(len(random))
    greedy = play_trials(Greedy(), venv, 5, seed=0)
    # Greedy plays randomly in episode 1 (every action ties under the prior) and learns after it.
    assert greedy.episode_returns[:, -1].mean() > greedy.episode_returns[:, 0].mean() + 3


def test_optimistic_transitions_solve_the_linear_program():
    rng = np.random.default_rng(0)
    p_hat = rng.dirichlet(np.ones(4), size=(3, 4, 2))  # [B, S, A, S] with S = 4
    radius = rng.uniform(0, 1.5, size=(3, 4, 2))
    values = rng.normal(size=(3, 4))
    p = optimistic_transitions(p_hat, radius, values)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    assert (p >= -1e-15).all()
    assert (np.abs(p - p_hat).sum(-1) <= radius + 1e-12).all()  # inside the confidence set
    best = np.einsum("bsan,bn->bsa", p, values)
    # No feasible row does better: random points of the simplex that lie inside the L1 ball.
    candidates = rng.dirichlet(np.full(4, 0.3), size=20000)  # [N, S]
    for b, s, a in itertools.product(range(3), range(4), range(2)):
        inside = np.abs(candidates - p_hat[b, s, a]).sum(-1) <= radius[b, s, a]
        if inside.any():
            assert (candidates[inside] @ values[b]).max() <= best[b, s, a] + 1e-12
    # By hand: radius 0 keeps p_hat; radius 2 puts everything on the best next state.
    v = np.array([[0.0, 2.0, 1.0]])
    row = np.full((1, 1, 1, 3), 1 / 3)
    np.testing.assert_allclose(optimistic_transitions(row, np.zeros((1, 1, 1)), v), row)
    np.testing.assert_allclose(optimistic_transitions(row, np.full((1, 1, 1), 2.0), v)[0, 0, 0], [0, 1, 0])
    # radius 0.4: +0.2 on the best state, taken from the worst (state 0)
    np.testing.assert_allclose(optimistic_transitions(row, np.full((1, 1, 1), 0.4), v)[0, 0, 0],
                               [1 / 3 - 0.2, 1 / 3 + 0.2, 1 / 3])


def test_ucrl2_with_zero_radii_is_greedy_on_the_empirical_mdp():
    venv = TabularMDPVectorEnv(4, n_states=3, n_actions=2, horizon=4,
                               tasks=TabularMDPEnv(n_states=3, n_actions=2).sample_tasks(4, np.random.default_rng(0)))
    strategy = UCRL2(scale=0.0)
    play_trials(strategy, venv, 3, seed=0)  # fills the counts
    post = strategy.posterior
    m = np.maximum(post.visits, 1.0)
    p_hat = np.where(post.visits[..., None] > 0, post.next_counts / m[..., None], 1 / 3)
    np.testing.assert_allclose(strategy.q_values(), plan(post.reward_sums / m, p_hat, 4), atol=1e-12)
    wide = UCRL2(scale=1.0)
    wide.reset(4, 3, 2, 4, np.random.default_rng(0))
    wide.posterior = post
    assert (wide.q_values() >= strategy.q_values() - 1e-12).all()  # optimism only adds value


def test_bad_input():
    with pytest.raises(ValueError, match="epsilon must lie in"):
        EpsilonGreedy(epsilon=1.5)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        BEB(beta=-1.0)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        UCRL2(scale=float("nan"))
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        OptimisticPSRL(samples=0)
    with pytest.raises(ValueError, match="replan must be 'episode' or 'step'"):
        Greedy(replan="always")
    with pytest.raises(TypeError, match="prior must be a TabularPrior"):
        Greedy(prior={"dirichlet": 1.0})
    with pytest.raises(ValueError, match="dirichlet must be a finite number > 0"):
        TabularPrior(dirichlet=0.0)
    with pytest.raises(TypeError, match="venv must be a TabularMDPVectorEnv"):
        play_trials(Greedy(), TabularMDPEnv(), 2, seed=0)
    with pytest.raises(ValueError, match="n_episodes must be an int >= 1"):
        play_trials(Greedy(), TabularMDPVectorEnv(2), 0, seed=0)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        Greedy().reset(1, 2, 2, 3, rng=0)
    with pytest.raises(ValueError, match="must agree"):
        plan(np.zeros((2, 2)), np.zeros((2, 2, 3)), 3)


def test_tabular_baselines_benchmark_quick(tmp_path):
    out = tmp_path / "tabular.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tabular_baselines.py"), "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert "provenance" in data and data["setup"]["quick"] is True
    setting = {s["n_episodes"]: s for s in data["settings"]}[10]
    results = setting["results"]
    assert results["random"]["n"] == 100 and setting["paper_rl2"] == 156.2
    assert results["greedy"]["mean"] > results["random"]["mean"] + 20
    assert setting["optimal_exact"] > max(r["mean"] for r in results.values())
    assert "| 10 |" in proc.stdout
