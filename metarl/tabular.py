"""Classical model-based strategies for random tabular MDPs: the baselines of the RL^2 tabular benchmark.

Duan et al. (2016, "RL^2", Sec. 4.2, Table 2) compare RL^2 on random tabular MDPs
(:mod:`metarl.envs.tabular_mdp`: ``|S| = 10``, ``|A| = 5``, episodes of ``T = 10`` steps from state 0, trials
of ``n`` episodes of one MDP) with tabular reinforcement-learning algorithms. This module implements the
Bayesian ones, vectorised over many MDPs at once (arrays ``[B, S, A]``), and plays whole trials through
:class:`~metarl.envs.tabular_mdp.TabularMDPVectorEnv` (:func:`play_trials`), so they face exactly the env the
meta-learners face.

Model (:class:`TabularPrior`, :class:`Posterior`)
------------------------------------------------
The strategies are given the prior the tasks are drawn from, as a meta-learner learns it from its
training tasks: mean rewards ``mu(s, a) ~ N(m0, 1 / tau0)``, rewards ``r ~ N(mu(s, a), 1 / tau)`` with known
noise precision ``tau``, transition rows ``P(s, a, .) ~ Dirichlet(alpha0, ..., alpha0)``; the RL^2 family
has ``m0 = 1``, ``tau0 = tau = 1``, ``alpha0 = 1`` (the defaults). Both parts are conjugate: after ``n(s, a)``
visits with reward sum ``R(s, a)`` and next-state counts ``C(s, a, s')``::

    mu(s, a) | data  ~  N( (tau0 m0 + tau R(s, a)) / (tau0 + tau n(s, a)),  1 / (tau0 + tau n(s, a)) )
    P(s, a, .) | data  ~  Dirichlet( alpha0 + C(s, a, .) )

Planning (:func:`plan`): backward induction over the ``T`` steps of an episode on a model ``(r, P)``::

    Q_t(s, a) = r(s, a) + sum_s' P(s' | s, a) V_{t+1}(s'),    V_T = 0,    V_t(s) = max_a Q_t(s, a).

Strategies
----------
Each plans from its posterior at the start of every episode (``replan="episode"``, the default: the
episodic schedule of posterior sampling for reinforcement learning) or before every step
(``replan="step"``), and at step ``t`` of an episode in state ``s`` takes ``argmax_a Q_t(s, a)``, ties broken
uniformly at random (:func:`metarl.bandits.argmax_random_ties`):

- :class:`RandomAction`: a uniformly random action at every step.
- :class:`Greedy`: plans on the posterior-mean MDP (certainty equivalence; no exploration beyond ties).
- :class:`Myopic`: no planning at all: in state ``s`` the action of largest posterior-mean reward
  ``E[mu(s, a) | data]`` (a one-step lookahead; an untried action is worth the prior mean). It needs only a
  table of per-``(s, a)`` reward means, the memory a recurrent policy can hold without modelling
  transitions, so it measures how much of a score planning over transitions earns.
- :class:`EpsilonGreedy`: :class:`Greedy`, but at each step a uniformly random action with probability
  ``epsilon``.
- :class:`PSRL`, posterior sampling (Strens, 2000; Osband, Russo & Van Roy, 2013): plans on *one* MDP
  drawn from the posterior. Per step re-planning (``replan="step"``) draws a new MDP every step, which is
  no longer PSRL (its commitment to one sample per episode is what makes it explore deliberately).
- :class:`OptimisticPSRL`: draws ``samples`` MDPs, solves each, and acts on the largest of their
  ``Q_t(s, a)`` (optimism over posterior samples).
- :class:`BEB`, Bayesian exploration bonus (Kolter & Ng, 2009): plans on the posterior-mean MDP with the
  reward ``r(s, a) + beta / (1 + n(s, a))``.

- :class:`UCRL2`, optimism in the face of uncertainty (Jaksch, Ortner & Auer, 2010), in its episodic form:
  plans on the most optimistic MDP of a confidence set around the empirical means (no prior), by extended
  value iteration (:func:`optimistic_transitions`). The reward radius is the sub-Gaussian one for the
  family's unit-variance noise (UCRL2's own is for rewards in ``[0, 1]``); the transition radius is
  UCRL2's; both are multiplied by ``scale``.

The Bayes-optimal
policy is intractable; :func:`episode_values` gives the two exact references of a known MDP (its optimal
policy, the uniformly random policy). Each strategy's own randomness (ties, exploration, posterior draws)
comes from a ``numpy.random.Generator`` separate from the env's reward and transition draws.

Example::

    >>> import numpy as np
    >>> from metarl.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv
    >>> tasks = TabularMDPEnv().sample_tasks(8, np.random.default_rng(0), split="test")
    >>> result = play_trials(PSRL(), TabularMDPVectorEnv(8, tasks=tasks), n_episodes=3, seed=0)
    >>> result.episode_returns.shape
    (8, 3)
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from metarl.bandits import argmax_random_ties
from metarl.envs.tabular_mdp import TabularMDPVectorEnv

__all__ = ["TabularPrior", "Posterior", "plan", "episode_values", "TabularStrategy", "RandomAction", "Greedy",
           "Myopic", "EpsilonGreedy", "PSRL", "OptimisticPSRL", "BEB", "UCRL2", "optimistic_transitions",
           "TabularTrialResult", "play_trials"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Replan = Literal["episode", "step"]


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero) or isinstance(value, bool):
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {need}, got {value!r}")
    return x


@dataclass(frozen=True)
class TabularPrior:
    """Conjugate prior over a tabular MDP (defaults: the RL^2 family of :mod:`metarl.envs.tabular_mdp`).

    Fields:
        reward_mean: ``m0``, prior mean of every ``mu(s, a)``.
        reward_precision: ``tau0``, prior precision (1 / variance) of ``mu(s, a)``.
        noise_precision: ``tau``, known precision of the reward noise around ``mu(s, a)``.
        dirichlet: ``alpha0``, the flat Dirichlet concentration of every transition row.
    """

    reward_mean: float = 1.0
    reward_precision: float = 1.0
    noise_precision: float = 1.0
    dirichlet: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.reward_mean)):
            raise ValueError(f"reward_mean must be finite, got {self.reward_mean!r}")
        for name in ("reward_precision", "noise_precision", "dirichlet"):
            _check_positive(name, getattr(self, name))


class Posterior:
    """Visit counts of ``B`` MDPs and the conjugate posterior they give (see the module docstring).

    Attributes: ``visits [B, S, A]``, ``reward_sums [B, S, A]``, ``next_counts [B, S, A, S]`` (float64).
    """

    def __init__(self, prior: TabularPrior, n_mdps: int, n_states: int, n_actions: int) -> None:
        self.prior = prior
        self.visits = np.zeros((n_mdps, n_states, n_actions))
        self.reward_sums = np.zeros((n_mdps, n_states, n_actions))
        self.next_counts = np.zeros((n_mdps, n_states, n_actions, n_states))
        self._rows = np.arange(n_mdps)

    def update(self, states: IntArray, actions: IntArray, rewards: FloatArray, next_states: IntArray) -> None:
        """Record one step ``(s, a, r, s')`` of every MDP (arrays ``[B]``)."""
        rows = self._rows
        self.visits[rows, states, actions] += 1.0
        self.reward_sums[rows, states, actions] += rewards
        self.next_counts[rows, states, actions, next_states] += 1.0

    def reward_precision(self) -> FloatArray:
        """``[B, S, A]`` posterior precision ``tau0 + tau n`` of ``mu(s, a)``."""
        return self.prior.reward_precision + self.prior.noise_precision * self.visits

    def mean_rewards(self) -> FloatArray:
        """``[B, S, A]`` posterior mean of ``mu(s, a)``."""
        p = self.prior
        return (p.reward_precision * p.reward_mean + p.noise_precision * self.reward_sums) / self.reward_precision()

    def mean_transitions(self) -> FloatArray:
        """``[B, S, A, S]`` posterior mean of ``P(s' | s, a)``: ``(alpha0 + C) / (S alpha0 + n)``."""
        alpha = self.prior.dirichlet + self.next_counts
        return alpha / alpha.sum(axis=-1, keepdims=True)

    def sample(self, rng: np.random.Generator, k: int) -> tuple[FloatArray, FloatArray]:
        """``k`` MDPs per posterior: rewards ``[k, B, S, A]`` and transitions ``[k, B, S, A, S]``.

        Dirichlet draws are normalised Gamma(alpha_i, 1) draws.
        """
        std = 1.0 / np.sqrt(self.reward_precision())
        rewards = self.mean_rewards() + std * rng.standard_normal((k, *self.visits.shape))
        gamma = rng.standard_gamma(np.broadcast_to(self.prior.dirichlet + self.next_counts,
                                                   (k, *self.next_counts.shape)))
        return rewards, gamma / gamma.sum(axis=-1, keepdims=True)


def plan(rewards: FloatArray, transitions: FloatArray, horizon: int) -> FloatArray:
    """Finite-horizon Q-values by backward induction: ``Q [T, ..., S, A]`` for ``rewards [..., S, A]`` and
    ``transitions [..., S, A, S]`` (any leading batch shape); ``Q[t]`` is step ``t`` of the episode."""
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(transitions, dtype=np.float64)
    if r.ndim < 2 or p.shape != (*r.shape, r.shape[-2]):
        raise ValueError(f"rewards [..., S, A] and transitions [..., S, A, S] must agree, got shapes {r.shape} and "
                         f"{p.shape}")
    q = np.empty((horizon, *r.shape))
    v = np.zeros(r.shape[:-1])  # V_T = 0, [..., S]
    for t in range(horizon - 1, -1, -1):
        q[t] = r + np.einsum("...san,...n->...sa", p, v)
        v = q[t].max(axis=-1)
    return q


def episode_values(mu: FloatArray, p: FloatArray, horizon: int, start_state: int = 0) -> tuple[float, float]:
    """Expected return of one episode from ``start_state`` of the known MDP ``(mu [S, A], p [S, A, S])``:
    ``(optimal policy, uniformly random policy)``; the random one is the same backward induction with
    ``V_t = mean_a Q_t``."""
    v_rand = np.zeros(mu.shape[0])
    for _ in range(horizon):
        v_rand = (mu + p @ v_rand).mean(axis=1)
    return float(plan(mu, p, horizon)[0, start_state].max()), float(v_rand[start_state])


class TabularStrategy(abc.ABC):
    """A strategy for trials of ``n`` episodes on ``B`` tabular MDPs at once.

    Protocol (driven by :func:`play_trials`): ``reset`` once per trial; ``begin_episode`` at the start of
    every episode; then per step ``act(t, states)`` and ``observe(states, actions, rewards, next_states)``.
    Subclasses implement :meth:`q_values` (``[T, B, S, A]`` from the current posterior).
    """

    def __init__(self, prior: TabularPrior | None = None, replan: Replan = "episode") -> None:
        if prior is not None and not isinstance(prior, TabularPrior):
            raise TypeError(f"prior must be a TabularPrior, got {type(prior).__name__}")
        if replan not in ("episode", "step"):
            raise ValueError(f"replan must be 'episode' or 'step', got {replan!r}")
        self.prior = prior or TabularPrior()
        self.replan: Replan = replan
        self.horizon = 0
        self._q: FloatArray | None = None

    def reset(self, n_mdps: int, n_states: int, n_actions: int, horizon: int, rng: np.random.Generator) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.posterior = Posterior(self.prior, n_mdps, n_states, n_actions)
        self.horizon, self.n_actions, self.rng = horizon, n_actions, rng
        self._rows = np.arange(n_mdps)
        self._q = None

    @abc.abstractmethod
    def q_values(self) -> FloatArray:
        """``[T, B, S, A]`` the values the strategy acts on, from the current posterior."""

    def begin_episode(self) -> None:
        if self.replan == "episode":
            self._q = self.q_values()

    def act(self, t: int, states: IntArray) -> IntArray:
        """``[B]`` actions at step ``t`` of the episode in ``states [B]``."""
        if self.replan == "step" or self._q is None:
            self._q = self.q_values()
        return argmax_random_ties(self._q[t, self._rows, states], self.rng)

    def observe(self, states: IntArray, actions: IntArray, rewards: FloatArray, next_states: IntArray) -> None:
        self.posterior.update(states, actions, rewards, next_states)

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return f"{type(self).__name__}({extra}{', ' if extra else ''}replan={self.replan!r})"


class RandomAction(TabularStrategy):
    """A uniformly random action at every step (all values tie)."""

    def q_values(self) -> FloatArray:
        return np.zeros((self.horizon, *self.posterior.visits.shape))


class Greedy(TabularStrategy):
    """Plan on the posterior-mean MDP."""

    def q_values(self) -> FloatArray:
        return plan(self.posterior.mean_rewards(), self.posterior.mean_transitions(), self.horizon)


class Myopic(TabularStrategy):
    """Act on the posterior-mean reward of the current state's actions alone (no transition model)."""

    def q_values(self) -> FloatArray:
        mu = self.posterior.mean_rewards()
        return np.broadcast_to(mu, (self.horizon, *mu.shape))


class EpsilonGreedy(Greedy):
    """:class:`Greedy`, with a uniformly random action with probability ``epsilon`` at each step."""

    def __init__(self, epsilon: float = 0.1, prior: TabularPrior | None = None, replan: Replan = "episode") -> None:
        super().__init__(prior, replan)
        self.epsilon = _check_positive("epsilon", epsilon, allow_zero=True)
        if self.epsilon > 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")

    def act(self, t: int, states: IntArray) -> IntArray:
        greedy = super().act(t, states)
        if self.epsilon == 0:  # exactly Greedy: no exploration draws, so the same tie-breaking stream
            return greedy
        explore = self.rng.random(greedy.shape) < self.epsilon
        return np.where(explore, self.rng.integers(0, self.n_actions, greedy.shape), greedy)

    def _extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class PSRL(TabularStrategy):
    """Posterior sampling: plan on one MDP drawn from the posterior."""

    def q_values(self) -> FloatArray:
        rewards, transitions = self.posterior.sample(self.rng, 1)
        return plan(rewards[0], transitions[0], self.horizon)


class OptimisticPSRL(TabularStrategy):
    """Act on the largest ``Q_t(s, a)`` of ``samples`` MDPs drawn from the posterior, each solved on its own."""

    def __init__(self, samples: int = 5, prior: TabularPrior | None = None, replan: Replan = "episode") -> None:
        super().__init__(prior, replan)
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.samples = int(samples)

    def q_values(self) -> FloatArray:
        rewards, transitions = self.posterior.sample(self.rng, self.samples)
        return plan(rewards, transitions, self.horizon).max(axis=1)  # [T, k, B, S, A] -> [T, B, S, A]

    def _extra_repr(self) -> str:
        return f"samples={self.samples}"


class BEB(TabularStrategy):
    """Plan on the posterior-mean MDP with the exploration bonus ``beta / (1 + n(s, a))`` added to rewards."""

    def __init__(self, beta: float = 1.0, prior: TabularPrior | None = None, replan: Replan = "episode") -> None:
        super().__init__(prior, replan)
        self.beta = _check_positive("beta", beta, allow_zero=True)

    def q_values(self) -> FloatArray:
        post = self.posterior
        bonus = self.beta / (1.0 + post.visits)
        return plan(post.mean_rewards() + bonus, post.mean_transitions(), self.horizon)

    def _extra_repr(self) -> str:
        return f"beta={self.beta}"


def optimistic_transitions(p_hat: FloatArray, radius: FloatArray, values: FloatArray) -> FloatArray:
    """The transition rows within L1 distance ``radius`` of ``p_hat`` that maximise ``sum_s' P(s') V(s')``.

    ``p_hat [B, S, A, S]`` rows on the simplex, ``radius [B, S, A]`` >= 0, ``values [B, S]`` the next-step values
    of each MDP. The maximiser of this linear program (UCRL2's inner problem) moves ``min(1 - p_hat(s*),
    radius / 2)`` of probability onto the best next state ``s*`` and takes it from the worst states first.
    """
    n_states = values.shape[-1]
    order = np.argsort(-values, axis=-1, kind="stable")  # [B, S], best next state first
    p = np.array(p_hat, dtype=np.float64, copy=True)
    shape = (*p.shape[:-1], 1)

    def column(k: int) -> IntArray:  # [B, S, A, 1] index of each MDP's k-th best next state
        return np.broadcast_to(order[:, None, None, k:k + 1], shape)

    best = column(0)
    p_best = np.take_along_axis(p, best, -1)[..., 0]
    moved = np.minimum(1.0 - p_best, radius / 2.0)
    np.put_along_axis(p, best, (p_best + moved)[..., None], -1)
    excess = moved.copy()
    for k in range(n_states - 1, 0, -1):  # from the worst state up
        idx = column(k)
        current = np.take_along_axis(p, idx, -1)[..., 0]
        taken = np.minimum(current, excess)
        np.put_along_axis(p, idx, (current - taken)[..., None], -1)
        excess -= taken
    return p


class UCRL2(TabularStrategy):
    """Plan on the most optimistic MDP within confidence radii of the empirical rewards and transitions.

    After ``n(s, a)`` visits (``m = max(1, n)``) and ``t`` steps in all (``t >= 1``), with ``delta = 0.05``::

        r(s, a)    <=  R(s, a) / m  +  scale * sqrt(2 ln(2 S A t / delta) / m)          (unit-variance Gaussian noise)
        |P(s, a, .) - C(s, a, .) / m|_1  <=  scale * sqrt(14 S ln(2 A t / delta) / m)  (UCRL2's radius)

    Unvisited pairs have empirical reward 0 and uniform transitions (their radii cover whatever matters). The
    prior is not used.
    """

    delta: float = 0.05

    def __init__(self, scale: float = 1.0, replan: Replan = "episode") -> None:
        super().__init__(None, replan)
        self.scale = _check_positive("scale", scale, allow_zero=True)

    def q_values(self) -> FloatArray:
        post = self.posterior
        n_states, n_actions = post.visits.shape[1:]
        m = np.maximum(post.visits, 1.0)
        t = max(float(post.visits.sum(axis=(1, 2)).max()), 1.0)
        r = post.reward_sums / m + self.scale * np.sqrt(2 * math.log(2 * n_states * n_actions * t / self.delta) / m)
        radius = self.scale * np.sqrt(14 * n_states * math.log(2 * n_actions * t / self.delta) / m)
        p_hat = np.where(post.visits[..., None] > 0, post.next_counts / m[..., None], 1.0 / n_states)
        q = np.empty((self.horizon, *r.shape))
        v = np.zeros(r.shape[:-1])
        for step in range(self.horizon - 1, -1, -1):
            q[step] = r + np.einsum("bsan,bn->bsa", optimistic_transitions(p_hat, radius, v), v)
            v = q[step].max(axis=-1)
        return q

    def _extra_repr(self) -> str:
        return f"scale={self.scale}"


@dataclass(frozen=True)
class TabularTrialResult:
    """One trial of ``n`` episodes on each of ``B`` MDPs.

    Fields:
        episode_returns: ``[B, n]`` float64, the summed rewards of each episode.
        actions: ``[B, n, T]`` int64 actions; states: ``[B, n, T]`` int64 states they were taken in.
    """

    episode_returns: FloatArray
    actions: IntArray
    states: IntArray

    @property
    def total_reward(self) -> FloatArray:
        """``[B]`` total reward of each MDP's trial."""
        return self.episode_returns.sum(axis=1)


def play_trials(strategy: TabularStrategy, venv: Any, n_episodes: int, seed: int,
                rng: np.random.Generator | None = None) -> TabularTrialResult:
    """Play one trial of ``n_episodes`` episodes of ``strategy`` on every sub-env of ``venv``.

    ``venv`` is a :class:`~metarl.envs.tabular_mdp.TabularMDPVectorEnv` holding the MDPs; it is reset with
    ``seed`` (sub-env ``b`` gets seed ``seed + b``) and stepped through its NEXT_STEP autoresets, so the env's
    draws continue across the episodes of the trial as in an RL^2 trial. ``rng`` drives the strategy's own
    randomness; ``None`` uses ``numpy.random.default_rng(seed)``.
    """
    if not isinstance(venv, TabularMDPVectorEnv):
        raise TypeError(f"venv must be a TabularMDPVectorEnv, got {type(venv).__name__}; build one with "
                        "TabularMDPVectorEnv(num_envs, tasks=tasks)")
    if not isinstance(strategy, TabularStrategy):
        raise TypeError(f"strategy must be a TabularStrategy, got {type(strategy).__name__}")
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
        raise ValueError(f"n_episodes must be an int >= 1, got {n_episodes!r}")
    n_mdps, horizon = venv.num_envs, venv.horizon
    _, info = venv.reset(seed=seed)
    strategy.reset(n_mdps, venv.n_states, venv.n_actions, horizon, np.random.default_rng(seed) if rng is None else rng)
    returns = np.zeros((n_mdps, n_episodes))
    actions = np.empty((n_mdps, n_episodes, horizon), dtype=np.int64)
    states = np.empty((n_mdps, n_episodes, horizon), dtype=np.int64)
    for episode in range(n_episodes):
        if episode:  # the env's autoreset step: back to state 0, reward 0, no draws
            _, reward, _, _, info = venv.step(np.zeros(n_mdps, dtype=np.int64))
            if reward.any() or info["state"].any():
                raise RuntimeError("the env did not reset every MDP to state 0 after an episode")
        state = info["state"]
        strategy.begin_episode()
        for t in range(horizon):
            action = strategy.act(t, state)
            _, reward, terminated, truncated, info = venv.step(action)
            strategy.observe(state, action, reward, info["state"])
            returns[:, episode] += reward
            actions[:, episode, t], states[:, episode, t] = action, state
            state = info["state"]
            last = t == horizon - 1
            if terminated.any() or (truncated.all() if last else truncated.any()) != last:
                raise RuntimeError(f"the env ended an episode at step {t + 1} of {horizon}; expected truncation "
                                   "exactly at the horizon")
    return TabularTrialResult(episode_returns=returns, actions=actions, states=states)
