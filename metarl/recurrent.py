"""Recurrent PPO over whole trials: the machinery RL² and MANN share.

A memory-based learner (``agents/rl2.py``, ``agents/mann.py``) is a *memory core* (a GRU, or a
controller with an external memory) inside :class:`RecurrentActorCritic`, which adds the policy and
value heads on the core's output. Experience comes in trials (:mod:`metarl.trials`); the update is PPO
(Schulman et al. 2017) over whole trials, or truncated BPTT over chunks of a trial:

- **Credit assignment over the trial** (:func:`trial_advantages`). The sequence being optimised is the
  whole trial (Duan et al. 2016, sec. 2.2: the RL² objective is the expected total discounted reward of
  the trial, across episode boundaries). GAE (Schulman et al. 2016) runs over the trial's steps as one
  sequence: ``delta_t = r_t + gamma V(x_{t+1}) - V(x_t)`` with ``x_{t+1}`` the next step *of the trial*,
  the first step of the next episode after an episode end (an episode's termination is not a terminal
  state of the trial); ``A_t = delta_t + gamma lambda A_{t+1}``. The trial's last step is terminal
  (``V = 0`` after it): the objective ends with the trial and the memory is cleared after it. (STYLE.md
  lists "end of a trial" among the truncations that bootstrap, meaning a rollout cut inside a
  trial; our rollouts always run trials to their end.)
- **The same sequence in the update** (:func:`recurrent_ppo_update`). The rollout stored the memory
  inputs and the state at the start of every chunk; each minibatch of (trial, chunk) columns is
  unrolled from those stored states over the stored inputs, which reproduces the rollout's
  log-probabilities and values exactly before the first gradient step (tested), and PPO's clipped
  surrogate (:func:`metarl.ppo.clipped_surrogate_loss`), value loss and entropy bonus are taken over
  the real steps: ``L = L_clip + c_V L_V - c_H H``.

- **Or TRPO** (``outer="trpo"``, :func:`recurrent_trpo_update`; the RL² paper's outer loop). One natural-gradient
  step of the policy's parameters over the whole batch, ``min -E[r_t A_t] - c_H H`` subject to
  ``E[KL(pi_old(. | h_t) || pi(. | h_t))] <= max_kl`` (:mod:`metarl.trpo`: conjugate gradient on the KL's Hessian,
  computed by double backward through the unrolled core, then a backtracking line search), followed by Adam epochs
  on the value loss alone. It needs the separate value core: a value loss on the policy's core would move the
  policy outside the trust region.

- **Shared or separate value memory** (``value_core``). ``shared``: the value head reads the policy's core,
  ``V(h_t)``. ``separate``: a second core of the same kind reads the same inputs and only the value head
  reads it, ``V(h^V_t)`` with ``h^V_t = core_V(x_0..x_t)``, as the RL² authors' code trains a separate
  recurrent baseline; the value loss then reaches the policy's weights only through the shared gradient
  clipping. The two cores' states are concatenated into the one flat state the rollout stores.

- **Value targets in unit scale.** The value head predicts the return normalised by running statistics
  of the value targets (mean and variance over every target seen, :meth:`RecurrentActorCritic.update_value_stats`;
  "ValueNorm", Yu et al. 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games"), and
  the value loss is taken in those units. Policy and value share the memory core and one clipped
  gradient: with raw targets (CartPole trials: returns of 50-100; Navigation2D: -50) the squared value
  error is 10^2-10^4 times the policy loss, its gradient fills the clipping norm and the policy stops
  learning (measured: Navigation2D trials stayed at -75 for 30 iterations, and reached -40 in 5 with the
  value loss switched off).

Batched throughout: the rollout steps every trial of a meta-batch in one env call, and the update
unrolls a minibatch of trials in one call of the core (for a GRU one ``torch.nn.GRU`` call); there is
no Python loop over trials.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import gymnasium
import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.learner import AdaptationResult, AdaptedPolicy
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, encode_obs, to_env_actions
from metarl.ppo import clipped_surrogate_loss, masked_mean, value_loss
from metarl.returns import gae, normalize
from metarl.rollout import TaskEnvs, episode_horizon
from metarl.trials import (
    TrialBatch,
    action_input_dim,
    collect_trials,
    encode_action,
    greedy_actions,
    memory_input_dim,
    memory_inputs,
)
from metarl.trpo import trpo_step
from metarl.types import Task

VALUE_CORES = ("shared", "separate")
OUTER_OPTIMIZERS = ("ppo", "trpo")


class MemoryCore(Protocol):
    """A recurrent core with a flat state ``[B, S]`` (all of its memory in one tensor).

    ``step(x [B, D], state [B, S]) -> (out [B, H], state [B, S])``; ``unroll(x [T, B, D], state [B, S])
    -> (out [T, B, H], final state [B, S])`` must equal ``T`` calls of ``step``.
    """

    state_size: int
    output_size: int

    def initial_state(self, batch: int, device: torch.device | str) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def unroll(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def unroll_by_steps(step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``T`` applications of ``step`` over ``x [T, B, D]``: outputs ``[T, B, H]`` and the final state."""
    outs = []
    for t in range(x.shape[0]):
        out, state = step(x[t], state)
        outs.append(out)
    return torch.stack(outs), state


class RecurrentActorCritic(nn.Module):
    """Policy and value heads on a memory core: ``pi(a | h_t)`` and ``V(h_t)``, ``h_t = core(x_0..x_t)``.

    Discrete actions: categorical logits from a linear head. Box actions: a Gaussian with a linear
    mean (normalised units, see :func:`metarl.policies.to_env_actions`) and a learned,
    state-independent log standard deviation, like :class:`metarl.policies.GaussianMLPPolicy`. The
    policy head starts at weights x 0.01 (near-uniform / near-zero-mean actions; Andrychowicz et al.
    2021, "What matters in on-policy RL", sec. 3.2).

    ``value_core``: a second memory core for the value head alone (module docstring); the state is
    ``[policy core's state, value core's state]``.

    ``time_scale > 0`` makes the value head time-aware: ``V(h_t, t / time_scale)`` with ``t`` the step index
    in the trial (Pardo et al. 2018, "Time Limits in Reinforcement Learning": in a fixed-length trial the
    value depends on the time left, which a GRU would have to learn to count). Only the value reads it;
    the policy's inputs stay RL²'s.

    ``task_dim > 0`` makes the value head task-informed: ``V(h_t, t, z_M)`` with ``z_M`` the task's parameters
    (:meth:`metarl.types.Task.features`, e.g. a bandit's arm probabilities), known in training only, and the head
    an MLP (``[h, t, z] -> H -> H -> 1``, tanh): the value of a bandit is about ``max_a p_a`` times the pulls left,
    which a linear head on ``z`` cannot express (``benchmarks/rl2_critic_fit.py``, fitted offline to a trained RL²
    bandit policy's returns-to-go: least squares on ``[h, t]`` leaves a squared error of 22.2 per step, on
    ``[h, t, z]`` 21.6, an MLP on ``[h, t, z]`` 12.4). Only the value reads them (an asymmetric critic, Pinto et
    al. 2018, "Asymmetric Actor Critic for Image-Based Robot Learning"; privileged task information in meta-RL
    training, Humplik et al. 2019, "Meta reinforcement learning as task inference"). The advantage stays
    unbiased: a baseline may depend on anything but the action, and ``a_t`` is drawn from ``pi(. | h_t)``
    whatever the task. Without the features (``task=None``, e.g. an adapted policy acting) the values are NaN:
    nothing may read them.
    """

    value_mean: torch.Tensor
    value_var: torch.Tensor
    value_count: torch.Tensor

    def __init__(self, core: nn.Module, observation_space: gymnasium.Space, action_space: gymnasium.Space,
                 init_std: float = 1.0, time_scale: float = 0.0, normalize_values: bool = False,
                 value_core: nn.Module | None = None, task_dim: int = 0) -> None:
        super().__init__()
        self.normalize_values = bool(normalize_values)
        # Running statistics of the value targets (float64: they accumulate over the whole run).
        self.register_buffer("value_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("value_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("value_count", torch.zeros((), dtype=torch.float64))
        self.input_size = memory_input_dim(observation_space, action_space)
        self.observation_space, self.action_space = observation_space, action_space
        self.core = core
        self.value_core = value_core
        self._split = int(core.state_size)  # type: ignore[arg-type]
        self.discrete = isinstance(action_space, gymnasium.spaces.Discrete)
        width = action_input_dim(action_space)
        h = int(core.output_size)  # type: ignore[arg-type]
        self.pi = nn.Linear(h, width)
        with torch.no_grad():
            self.pi.weight.mul_(0.01)
            self.pi.bias.zero_()
        self.log_std = None if self.discrete else nn.Parameter(torch.full((width,), math.log(init_std)))
        self.time_scale = float(time_scale)
        h_v = h if value_core is None else int(value_core.output_size)  # type: ignore[arg-type]
        self.task_dim = int(task_dim)
        v_in = h_v + (1 if self.time_scale > 0 else 0) + self.task_dim
        self.v: nn.Module = nn.Linear(v_in, 1) if self.task_dim == 0 else nn.Sequential(
            nn.Linear(v_in, h_v), nn.Tanh(), nn.Linear(h_v, h_v), nn.Tanh(), nn.Linear(h_v, 1))

    def _device(self) -> torch.device:
        return next(self.v.parameters()).device

    def initial_state(self, batch: int) -> torch.Tensor:
        """The cleared memory of ``batch`` trials ``[batch, S]``."""
        state = self.core.initial_state(batch, self._device())  # type: ignore[operator]
        if self.value_core is None:
            return state
        return torch.cat([state, self.value_core.initial_state(batch, self._device())], -1)  # type: ignore[operator]

    def heads(self, out: torch.Tensor, time: torch.Tensor, value_out: torch.Tensor | None = None,
              task: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor]:
        """Core outputs ``[..., B, H]`` and step indices ``[..., B]`` -> action distribution (batch shape
        ``[..., B]``) and values ``[..., B]``; the value head reads ``value_out`` (the value core's outputs) when
        given, and each column's task features ``task [B, F]`` when it is task-informed."""
        return self.action_distribution(out), self.value_head(out if value_out is None else value_out, time, task)

    def value_head(self, v_in: torch.Tensor, time: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """``V`` from the outputs ``[..., B, H]`` of the core it reads (see :meth:`heads`): values ``[..., B]``."""
        if self.time_scale > 0:
            v_in = torch.cat([v_in, (time.to(v_in.dtype) / self.time_scale)[..., None]], -1)
        if self.task_dim > 0:
            if task is None:  # e.g. an adapted policy acting on a new task: no privileged information
                return torch.full(v_in.shape[:-1], math.nan, dtype=v_in.dtype, device=v_in.device)
            if task.shape != (*v_in.shape[-2:-1], self.task_dim):
                raise ValueError(f"task features must have shape [B, {self.task_dim}] = "
                                 f"{[*v_in.shape[-2:-1], self.task_dim]}, got {list(task.shape)}")
            v_in = torch.cat([v_in, task.to(v_in.dtype).expand(*v_in.shape[:-1], self.task_dim)], -1)
        values = self.v(v_in).squeeze(-1)
        if self.normalize_values:
            values = values * self.value_std.to(values.dtype) + self.value_mean.to(values.dtype)
        return values

    def action_distribution(self, out: torch.Tensor) -> Distribution:
        """``pi(. | h)`` from the policy core's outputs ``[..., B, H]``."""
        if self.log_std is None:
            return CategoricalMLPPolicy.make_distribution(self.pi(out))
        mean = self.pi(out)
        return GaussianMLPPolicy.make_distribution((mean, self.log_std.expand_as(mean)))

    def policy_parameters(self) -> list[nn.Parameter]:
        """The parameters ``pi`` depends on: the policy core and head (not a separate value core or the value head)."""
        return [p for name, p in self.named_parameters() if not name.startswith(("value_core.", "v."))]

    def unroll_policy(self, inputs: torch.Tensor, state: torch.Tensor) -> Distribution:
        """``pi(. | h_t)`` over ``inputs [T, B, D_in]`` unrolled from ``state [B, S]``, the policy core alone."""
        out, _ = self.core.unroll(inputs, state[..., :self._split])  # type: ignore[operator]
        return self.action_distribution(out)

    def unroll_values(self, inputs: torch.Tensor, state: torch.Tensor, time: torch.Tensor,
                      task: torch.Tensor | None = None) -> torch.Tensor:
        """``V(h_t)`` over ``inputs [T, B, D_in]`` unrolled from ``state [B, S]`` (arguments as :meth:`evaluate`):
        with a separate value core that core alone is unrolled; a shared core is unrolled as in :meth:`evaluate`."""
        if self.value_core is None:
            return self.evaluate(inputs, state, time, task)[1]
        value_out, _ = self.value_core.unroll(inputs, state[..., self._split:])  # type: ignore[operator]
        return self.value_head(value_out, time, task)

    @property
    def value_std(self) -> torch.Tensor:
        return self.value_var.clamp(min=1e-8).sqrt()

    def update_value_stats(self, targets: torch.Tensor, mask: torch.Tensor) -> None:
        """Merge the mean and variance of the real steps' value targets into the running statistics
        (Chan et al.'s parallel update: exact statistics of every target seen so far)."""
        x = targets.detach().double()[mask > 0]
        n = float(x.numel())
        if n == 0:
            return
        mean, var = x.mean(), x.var(unbiased=False)
        total = self.value_count + n
        delta = mean - self.value_mean
        m2 = self.value_var * self.value_count + var * n + delta**2 * self.value_count * n / total
        self.value_mean.copy_(self.value_mean + delta * n / total)
        self.value_var.copy_(m2 / total)
        self.value_count.copy_(total)

    def run_cores(self, method: str, inputs: torch.Tensor,
                  state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The cores' ``step`` or ``unroll`` on ``inputs`` from ``state``: the policy core's outputs, the value
        core's (``None`` when shared) and the new flat state ``[policy core's, value core's]``."""
        if self.value_core is None:
            out, new = getattr(self.core, method)(inputs, state)
            return out, None, new
        out, s_pi = getattr(self.core, method)(inputs, state[..., :self._split])
        value_out, s_v = getattr(self.value_core, method)(inputs, state[..., self._split:])
        return out, value_out, torch.cat([s_pi, s_v], -1)

    def step(self, inputs: torch.Tensor, state: torch.Tensor, time: torch.Tensor,
             task: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor, torch.Tensor]:
        out, value_out, state = self.run_cores("step", inputs, state)
        dist, values = self.heads(out, time, value_out, task)
        return dist, values, state

    def evaluate(self, inputs: torch.Tensor, state: torch.Tensor, time: torch.Tensor | None = None,
                 task: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor, torch.Tensor]:
        """Unroll ``inputs [T, B, D_in]`` from ``state [B, S]``: distribution ``[T, B]``, values ``[T, B]`` and
        the final state. ``time [T, B]``: step indices in the trial (default ``0 ... T - 1``); ``task [B, F]``:
        each column's task features (a task-informed value head's)."""
        if time is None:
            time = torch.arange(inputs.shape[0], device=inputs.device)[:, None].expand(inputs.shape[:2])
        out, value_out, final = self.run_cores("unroll", inputs, state)
        dist, values = self.heads(out, time, value_out, task)
        return dist, values, final


# ----------------------------------------------------------------------------------------------------------
# The math over trials. Shapes: T rows, B trials, C chunks of L rows.


def trial_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                     lam: float) -> torch.Tensor:
    """GAE(gamma, lambda) over each whole trial ``[T, B]``; the trial's last real step is terminal.

    Episode ends inside a trial are ignored: ``V(x_{t+1})`` is the value of the trial's next step.
    Padding (``mask == 0``) gets advantage 0.
    """
    real = mask > 0
    trial_end = real & ~torch.cat([real[1:], torch.zeros_like(real[:1])])
    end = (trial_end | ~real).to(rewards.dtype)
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    return gae(rewards, values, next_values, end, end, gamma, lam) * mask


def to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[T, B, ...] -> [L, C * B, ...]`` with ``L = chunk``, ``C = ceil(T / L)``, zero padded; column
    ``c * B + b`` is rows ``c L ... c L + L - 1`` of trial ``b``."""
    t, b = x.shape[:2]
    c = math.ceil(t / chunk)
    if c * chunk > t:
        x = torch.cat([x, x.new_zeros((c * chunk - t, *x.shape[1:]))])
    return x.reshape(c, chunk, b, *x.shape[2:]).transpose(0, 1).reshape(chunk, c * b, *x.shape[2:])


@dataclass(frozen=True)
class PPOSettings:
    """The knobs of one recurrent PPO update (read from a learner's config)."""

    epochs: int
    minibatches: int
    clip: float
    value_coef: float
    entropy_coef: float
    max_grad_norm: float
    gamma: float
    gae_lambda: float
    train_policy: bool = True  # False: the value loss alone (a value warm-up; see TrialPPOConfig)


@dataclass
class UpdateColumns:
    """One batch of trials laid out for the update: ``data[k]`` is ``[L, C * B, ...]`` (:func:`to_chunks`),
    ``states`` each column's stored initial state, ``task`` its task features (or ``None``), ``keep`` the columns
    holding real steps, ``value_scale`` the variance that normalises the value loss."""

    data: dict[str, torch.Tensor]
    states: torch.Tensor
    task: torch.Tensor | None
    keep: torch.Tensor
    value_scale: float


def update_columns(model: RecurrentActorCritic, batch: TrialBatch, s: PPOSettings) -> UpdateColumns:
    """GAE over the trials, value targets (merged into the value statistics once per batch) and the chunk layout."""
    adv = trial_advantages(batch.rewards, batch.values, batch.mask, s.gamma, s.gae_lambda)
    returns = (adv + batch.values) * batch.mask
    adv = normalize(adv, batch.mask)
    if model.normalize_values:
        model.update_value_stats(returns, batch.mask)
    value_scale = float(model.value_var.clamp(min=1e-8)) if model.normalize_values else 1.0
    t, b = batch.rewards.shape
    time = torch.arange(t, device=adv.device)[:, None].expand(t, b)
    cols = {"inputs": batch.inputs, "actions": batch.actions, "log_probs": batch.log_probs, "adv": adv,
            "returns": returns, "mask": batch.mask, "time": time}
    data = {k: to_chunks(v, batch.chunk) for k, v in cols.items()}
    states = batch.initial_states.reshape(-1, batch.initial_states.shape[-1])  # [C * B, S], chunk-major
    # Chunk column c * B + b belongs to trial b (to_chunks' layout): its task features, repeated chunk after chunk.
    task = batch.task_features.repeat(states.shape[0] // b, 1) if model.task_dim > 0 else None
    keep = (data["mask"].sum(0) > 0).nonzero(as_tuple=True)[0]  # chunks past a short trial's end hold nothing
    return UpdateColumns(data, states, task, keep, value_scale)


def recurrent_ppo_update(model: RecurrentActorCritic, optimizer: torch.optim.Optimizer, batch: TrialBatch,
                         s: PPOSettings) -> dict[str, float]:
    """PPO epochs over minibatches of (trial, chunk) columns, each unrolled from its stored state."""
    return ppo_epochs(model, optimizer, update_columns(model, batch, s), s)


def ppo_epochs(model: RecurrentActorCritic, optimizer: torch.optim.Optimizer, u: UpdateColumns,
               s: PPOSettings) -> dict[str, float]:
    """``s.epochs`` passes of Adam (or ``optimizer``) over minibatches of the columns: ``L = L_clip + c_V L_V - c_H H``,
    or ``c_V L_V`` alone when ``s.train_policy`` is false."""
    data, states, task, keep = u.data, u.states, u.task, u.keep
    n_cols = int(keep.numel())
    stats: dict[str, list[float]] = defaultdict(list)
    for _ in range(s.epochs):
        perm = keep[torch.randperm(n_cols, device=keep.device)]
        for idx in perm.chunk(min(s.minibatches, n_cols)):
            m = data["mask"][:, idx]
            cols_task = None if task is None else task[idx]
            logged: dict[str, torch.Tensor] = {}
            if s.train_policy:
                dist, values, _ = model.evaluate(data["inputs"][:, idx], states[idx], data["time"][:, idx], cols_task)
                terms = clipped_surrogate_loss(dist.log_prob(data["actions"][:, idx]), data["log_probs"][:, idx],
                                               data["adv"][:, idx], s.clip, m)
                entropy = masked_mean(dist.entropy(), m)
                logged.update(policy_loss=terms.loss, entropy=entropy, clip_fraction=terms.clip_fraction,
                              approx_kl=terms.approx_kl)
            else:  # value warm-up, or TRPO's value fit: the policy's parameters get no gradient (and with a
                # separate value core the policy core is not even unrolled)
                values = model.unroll_values(data["inputs"][:, idx], states[idx], data["time"][:, idx], cols_task)
            v_loss = value_loss(values, data["returns"][:, idx], m) / u.value_scale  # in normalised units
            loss = s.value_coef * v_loss
            if s.train_policy:
                loss = terms.loss + loss - s.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            # Logged before clipping: the diagnostic that exposed the value loss filling the shared core's
            # gradient (module docstring).
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm or math.inf)
            optimizer.step()
            logged.update(loss=loss, value_loss=v_loss, grad_norm=grad_norm)
            for k, v in logged.items():
                stats[k].append(float(v.item()))
    order = ("loss", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm")
    return {f"train/{k}": float(np.mean(stats[k])) for k in order if k in stats}


@dataclass(frozen=True)
class TRPOSettings:
    """The trust region of one TRPO policy step (:func:`metarl.trpo.trpo_step`)."""

    max_kl: float
    cg_iters: int
    cg_damping: float
    backtrack_ratio: float
    max_backtracks: int


def recurrent_trpo_update(model: RecurrentActorCritic, optimizer: torch.optim.Optimizer, batch: TrialBatch,
                          s: PPOSettings, t: TRPOSettings) -> dict[str, float]:
    """The RL² paper's outer loop: one TRPO step of the policy over all columns, then the value fit.

    Policy: ``min_theta -E[r_t A_t] - c_H H[pi_theta]`` with ``r_t = pi_theta(a_t | h_t) / pi_old(a_t | h_t)``,
    subject to ``E[KL(pi_old(. | h_t) || pi_theta(. | h_t))] <= max_kl``, expectations over the batch's real steps
    and ``h_t`` recomputed from the stored states (so the KL is 0 and the ratio 1 at ``theta_old``). Value: then
    ``s.epochs`` passes of ``optimizer`` on ``c_V L_V`` alone (the value core is separate, so the policy stays as
    the trust-region step left it). The advantages are the rollout-time critic's, as for PPO.
    """
    u = update_columns(model, batch, s)
    if not s.train_policy:  # value warm-up
        return ppo_epochs(model, optimizer, u, s)
    cols = u.keep
    inputs, states = u.data["inputs"][:, cols], u.states[cols]
    actions, old_log_probs = u.data["actions"][:, cols], u.data["log_probs"][:, cols]
    adv, m = u.data["adv"][:, cols], u.data["mask"][:, cols]
    with torch.no_grad():
        old = model.unroll_policy(inputs, states)

    def loss_and_kl(need_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(need_graph):
            dist = model.unroll_policy(inputs, states)
            ratio = (dist.log_prob(actions) - old_log_probs).exp()
            loss = -masked_mean(ratio * adv, m) - s.entropy_coef * masked_mean(dist.entropy(), m)
            return loss, masked_mean(kl_divergence(old, dist), m)

    info = trpo_step(model.policy_parameters(), loss_and_kl, t.max_kl, t.cg_iters, t.cg_damping, t.backtrack_ratio,
                     t.max_backtracks)
    metrics = ppo_epochs(model, optimizer, u, replace(s, train_policy=False))
    metrics.update(info.metrics())
    metrics["train/entropy"] = float(masked_mean(old.entropy(), m))  # of the policy that collected the batch
    return metrics


# ----------------------------------------------------------------------------------------------------------
# configuration and the learner shared by RL² and MANN


def linear_schedule(start: float, end: float, iterations: int, iteration: int) -> float:
    """``start`` at iteration 0, ``end`` from ``iterations`` on, linear in between; ``iterations == 0``: ``start``."""
    if iterations == 0:
        return start
    return start + min(iteration / iterations, 1.0) * (end - start)


@dataclass(frozen=True)
class TrialPPOConfig:
    """Trials and recurrent PPO; RL²'s and MANN's configs add their memory's size to these fields."""

    meta_batch_size: int = option(64, "trials (one task each) per training iteration")
    trials_per_task: int = option(1, "trials per task per iteration (columns = meta_batch_size * trials_per_task)")
    episodes_per_trial: int = option(2, "episodes n per trial (RL² bandits: 1 episode of n pulls; tabular: 10)")
    bptt_chunk: int = option(0, "rows per truncated-BPTT chunk (0: backpropagate through whole trials)")
    gamma: float = option(0.99, "discount over the trial (RL² paper: 0.99)")
    gae_lambda: float = option(0.3, "GAE lambda over the trial at iteration 0 (RL² paper, bandits: 0.3)")
    gae_lambda_final: float = option(0.3, "GAE lambda after gae_lambda_iterations (linear in between)")
    gae_lambda_iterations: int = option(0, "iterations over which lambda moves to gae_lambda_final (0: constant)")
    lr: float = option(1e-3, "Adam learning rate at iteration 0")
    lr_final: float = option(0.0, "learning rate after lr_decay_iterations (linear in between)")
    lr_decay_iterations: int = option(0, "iterations over which the learning rate decays to lr_final (0: constant)")
    outer: str = option("ppo", "outer optimiser: ppo (clipped surrogate, Adam on policy and value) or trpo (the "
                               "RL² paper's: a KL trust-region step of the policy, then Adam on the value loss; "
                               "needs value_core=separate)")
    max_kl: float = option(0.01, "TRPO: bound delta on the mean KL between the old and new policy per update")
    cg_iters: int = option(10, "TRPO: conjugate-gradient iterations")
    cg_damping: float = option(0.1, "TRPO: damping lambda added to the KL Hessian in CG")
    ls_backtrack_ratio: float = option(0.8, "TRPO: line-search shrink factor")
    ls_max_steps: int = option(15, "TRPO: line-search candidates before giving up (policy kept)")
    ppo_epochs: int = option(4, "passes over each batch of trials (TRPO: passes of the value fit)")
    minibatches: int = option(4, "minibatches (of whole trials or chunks) per pass")
    clip: float = option(0.2, "PPO clipping range epsilon (TRPO: only the logged clip fraction uses it)")
    value_coef: float = option(0.5, "value-loss coefficient c_V")
    entropy_coef: float = option(0.01, "entropy bonus c_H at iteration 0")
    entropy_coef_final: float = option(0.01, "entropy bonus after entropy_decay_iterations (linear in between)")
    entropy_decay_iterations: int = option(0, "iterations over which c_H decays to entropy_coef_final (0: constant)")
    max_grad_norm: float = option(0.5, "gradient-norm clipping (0 disables)")
    value_warmup_iterations: int = option(0, "first iterations that train the value loss alone (e.g. a fresh value "
                                             "core under policy weights loaded from elsewhere); with "
                                             "value_core=shared the policy's core still moves")
    reward_scale: float = option(1.0, "factor on the previous reward in the memory input (the loss uses raw rewards)")
    init_std: float = option(1.0, "initial std of Gaussian actions, in normalised units")
    time_aware_value: bool = option(True, "the value head also reads t / trial length (Pardo et al. 2018); the "
                                          "policy never sees it")
    normalize_values: bool = option(True, "value head and value loss in units of running statistics of the "
                                          "value targets (module docstring); false: raw returns")
    value_core: str = option("shared", "shared: the value head reads the policy's memory core; separate: its own "
                                       "core of the same kind and size (the RL² authors' code: a separate "
                                       "recurrent baseline)")
    task_informed_value: bool = option(False, "the value head also reads the task's parameters (Task.features(); "
                                              "training only, the policy never sees them: an asymmetric critic)")
    adapt_trials: int = option(1, "trials per task at evaluation when the caller gives none")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size", "trials_per_task", "episodes_per_trial", "ppo_epochs",
                         "minibatches", "adapt_trials")
        require_choice(self, "value_core", VALUE_CORES)
        require_choice(self, "outer", OUTER_OPTIMIZERS)
        require(self.outer != "trpo" or self.value_core == "separate",
                "outer=trpo steps the policy within a trust region and fits the value separately, so the value needs "
                f"a memory core of its own: set value_core=separate (got value_core={self.value_core})")
        require_positive(self, "max_kl", "cg_iters", "ls_max_steps")
        require(0.0 < self.ls_backtrack_ratio < 1.0,
                f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}")
        require(self.cg_damping >= 0.0, f"cg_damping must be >= 0, got {self.cg_damping}")
        require(self.bptt_chunk >= 0, f"bptt_chunk must be >= 0 rows (0: whole trials), got {self.bptt_chunk}")
        require(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        for name in ("gae_lambda", "gae_lambda_final"):
            require(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1], got {getattr(self, name)}")
        require_positive(self, "lr", "clip", "init_std", "reward_scale")
        require_at_least(self, 0, "value_coef", "entropy_coef", "entropy_coef_final", "entropy_decay_iterations",
                         "gae_lambda_iterations", "value_warmup_iterations", "max_grad_norm", "lr_final",
                         "lr_decay_iterations")

    def entropy_at(self, iteration: int) -> float:
        """``c_H`` of ``iteration``: linear from ``entropy_coef`` to ``entropy_coef_final``."""
        return linear_schedule(self.entropy_coef, self.entropy_coef_final, self.entropy_decay_iterations, iteration)

    def gae_lambda_at(self, iteration: int) -> float:
        """GAE's ``lambda`` of ``iteration``: linear from ``gae_lambda`` to ``gae_lambda_final``."""
        return linear_schedule(self.gae_lambda, self.gae_lambda_final, self.gae_lambda_iterations, iteration)

    def lr_at(self, iteration: int) -> float:
        """The learning rate of ``iteration``: linear from ``lr`` to ``lr_final``."""
        return linear_schedule(self.lr, self.lr_final, self.lr_decay_iterations, iteration)

    def ppo_settings(self, iteration: int) -> PPOSettings:
        return PPOSettings(self.ppo_epochs, self.minibatches, self.clip, self.value_coef, self.entropy_at(iteration),
                           self.max_grad_norm, self.gamma, self.gae_lambda_at(iteration),
                           train_policy=iteration >= self.value_warmup_iterations)

    def trpo_settings(self) -> TRPOSettings:
        return TRPOSettings(self.max_kl, self.cg_iters, self.cg_damping, self.ls_backtrack_ratio, self.ls_max_steps)


@dataclass
class AdaptedMemoryPolicy(AdaptedPolicy):
    """A memory learner adapted to one task: its memory state after the adaptation trial.

    ``act(obs, reward=r, done=d)`` continues the trial: ``r`` is the reward of this policy's previous
    action and ``d`` whether that step ended an episode (both are memory inputs). The first call after
    adaptation may omit them (the trial's last step is stored).
    """

    state: torch.Tensor | None = None
    prev_action: torch.Tensor | None = None
    prev_reward: float = 0.0
    prev_done: bool = True
    reward_scale: float = 1.0
    steps: int = 0
    _fresh: bool = True

    def act(self, obs: np.ndarray, deterministic: bool = False, reward: float | None = None,
            done: bool | None = None) -> np.ndarray:
        """The action for one observation; advances the memory by one step."""
        if np.asarray(obs).shape != self.observation_space.shape:
            raise ValueError(f"a memory policy acts on one observation of shape {self.observation_space.shape} at a "
                             f"time (its memory belongs to one task), got shape {np.asarray(obs).shape}")
        if reward is None and not self._fresh:
            raise ValueError("pass reward= (the reward of the previous action) and done= to keep the memory "
                             "adapting; only the first call after adapt() may omit them")
        model = self.policy
        assert isinstance(model, RecurrentActorCritic) and self.state is not None and self.prev_action is not None
        r = self.prev_reward if reward is None else float(reward)
        d = self.prev_done if done is None else bool(done)
        x = memory_inputs(encode_obs(np.asarray(obs)[None], self.observation_space, self.device), self.prev_action,
                          torch.tensor([r * self.reward_scale], device=self.device),
                          torch.tensor([d], device=self.device))
        with torch.no_grad():
            dist, _, self.state = model.step(x, self.state, torch.tensor([self.steps], device=self.device))
            self.steps += 1
            a = greedy_actions(dist) if deterministic else dist.sample()
        self.prev_action = encode_action(a, self.action_space)
        self._fresh = False
        return to_env_actions(a, self.action_space)[0]


class TrialPPOLearner:
    """A memory core trained with PPO over trials; adapts by running a trial through its memory.

    ``make_core(input_size)`` builds the core (``agents/rl2.py``: a GRU; ``agents/mann.py``: a
    controller with an external memory). ``adapt_many(tasks, budget, seed, episodes_per_step)`` runs
    ``episodes_per_step`` trials of ``budget + 1`` episodes per task; ``stage_returns[:, k]`` is the
    mean return of episode ``k + 1`` (memory persisting from episode to episode).
    """

    stage_unit = "episodes"

    def __init__(self, envs: TaskEnvs, config: TrialPPOConfig, make_core: Callable[[int], nn.Module], seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        own = episode_horizon(envs.env, default=envs.horizon)
        if envs.horizon < own:
            raise ValueError(f"trials run whole env episodes, but the TaskEnvs cuts them at max_steps={envs.horizon} "
                             f"< the env's own horizon {own}; set the episode length on the env instead "
                             "(e.g. an env keyword such as horizon=...)")
        self.envs, self.config, self.seed, self.device = envs, config, seed, torch.device(device)
        torch.manual_seed(seed)
        input_size = memory_input_dim(envs.observation_space, envs.action_space)
        core = make_core(input_size)
        value_core = make_core(input_size) if config.value_core == "separate" else None
        time_scale = float(config.episodes_per_trial * envs.horizon) if config.time_aware_value else 0.0
        # The features' width, from one task of the family (every task of a family has the same fields).
        task_dim = len(envs.sample_tasks(1, np.random.default_rng(0))[0].features()) \
            if config.task_informed_value else 0
        self.model = RecurrentActorCritic(core, envs.observation_space, envs.action_space, config.init_std, time_scale,
                                          config.normalize_values, value_core, task_dim)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.steps_done = 0

    def collect(self, tasks: Sequence[Task], trials_per_task: int, n_episodes: int, seed: int,
                greedy: bool = False) -> TrialBatch:
        venv = self.envs.vector(len(tasks) * trials_per_task)
        return collect_trials(venv, self.model, tasks, trials_per_task, n_episodes, seed, self.envs.horizon,
                              self.config.bptt_chunk, self.config.reward_scale, self.device, greedy,
                              task_features=self.model.task_dim > 0)

    def meta_train_step(self, tasks: Sequence[Task]) -> dict[str, float]:
        c = self.config
        batch = self.collect(tasks, c.trials_per_task, c.episodes_per_trial,
                             seed=self.seed * 1_000_003 + self.steps_done * 7919)
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr_at(self.steps_done)
        if c.outer == "trpo":
            metrics = recurrent_trpo_update(self.model, self.optimizer, batch, c.ppo_settings(self.steps_done),
                                            c.trpo_settings())
        else:
            metrics = recurrent_ppo_update(self.model, self.optimizer, batch, c.ppo_settings(self.steps_done))
        self.steps_done += 1
        per_episode = batch.episode_returns.mean(0)
        metrics.update({
            "train/entropy_coef": c.entropy_at(self.steps_done - 1),
            "train/lr": c.lr_at(self.steps_done - 1),
            "train/gae_lambda": c.gae_lambda_at(self.steps_done - 1),
            "rollout/return_mean": float(batch.trial_returns.mean()),
            "rollout/first_episode_return": float(per_episode[0]),
            "rollout/last_episode_return": float(per_episode[-1]),
            "rollout/env_steps": float(batch.num_steps),
        })
        return metrics

    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None, greedy: bool = False) -> AdaptationResult:
        """Trials of ``budget + 1`` episodes per task (``greedy``: most likely actions, not sampled ones)."""
        if budget < 0:
            raise ValueError(f"budget must be >= 0 (a trial of budget + 1 episodes), got {budget}")
        e = episodes_per_step or self.config.adapt_trials
        n = len(tasks)
        batch = self.collect(tasks, e, budget + 1, seed, greedy)
        stage = batch.episode_returns.reshape(n, e, budget + 1).mean(1).cpu().numpy().astype(np.float64)
        first = torch.arange(n, device=self.device) * e  # each task's first trial carries on in its policy
        adapted: list[AdaptedPolicy] = [
            AdaptedMemoryPolicy(self.model, None, self.envs.observation_space, self.envs.action_space,
                                stage[i].tolist(), self.device, state=batch.final_states[j:j + 1].clone(),
                                prev_action=batch.last_action[j:j + 1].clone(),
                                prev_reward=float(batch.rewards[:, j][batch.mask[:, j] > 0][-1]),
                                reward_scale=self.config.reward_scale, steps=int(batch.mask[:, j].sum()))
            for i, j in enumerate(first.tolist())]
        return AdaptationResult(stage, adapted, stage_unit=self.stage_unit)

    def adapt(self, task: Task, budget: int, seed: int = 0) -> AdaptedPolicy:
        return self.adapt_many([task], budget, seed).adapted[0]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_done": self.steps_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])
        self.seed = int(state["seed"])

    def to(self, device: torch.device | str) -> TrialPPOLearner:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


__all__ = ["AdaptedMemoryPolicy", "MemoryCore", "PPOSettings", "RecurrentActorCritic", "TRPOSettings", "TrialPPOConfig",
           "TrialPPOLearner", "UpdateColumns", "linear_schedule", "ppo_epochs", "recurrent_ppo_update",
           "recurrent_trpo_update", "to_chunks", "trial_advantages", "unroll_by_steps", "update_columns"]
