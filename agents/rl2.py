"""RL²: fast reinforcement learning via slow reinforcement learning (Duan et al. 2016).

Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel (2016), "RL²: Fast Reinforcement Learning via
Slow Reinforcement Learning", arXiv:1611.02779.

The "fast" learner is the hidden state of a recurrent policy; the "slow" learner is the RL
algorithm that trains its weights. A trial is ``n`` episodes of one task ``M ~ rho``; the GRU's hidden
state ``h`` persists across the episode boundaries inside a trial and is reset to 0 at the start of
a trial (sec. 2.2, fig. 1). At every step the GRU reads the observation, the previous action, reward
and episode-done flag (:func:`metarl.trials.memory_inputs`)::

    x_t = [s_t, a_{t-1}, r_{t-1}, d_{t-1}],      h_t = GRU(x_t, h_{t-1}),  h_{-1} = 0,
    pi_theta(a_t | h_t) = softmax(W_pi h_t + b_pi)  (or N(W_pi h_t + b_pi, diag(sigma)^2) for Box actions),
    V_theta(h_t) = w_V^T h_t + b_V.

Objective: the expected total discounted reward of a whole trial, over tasks,
``max_theta E_{M ~ rho} E_{tau ~ pi_theta, M}[ sum_{t=0}^{T_trial} gamma^t r_t ]``: the policy is rewarded for
exploring in early episodes when that pays off in later ones. It is optimised with PPO's clipped
surrogate (or the paper's TRPO, ``outer="trpo"``) and GAE over the whole trial:
``delta_t = r_t + gamma V(h_{t+1}) - V(h_t)`` continues across episode ends, the trial's last step is terminal
(:func:`metarl.recurrent.trial_advantages`),
and ``L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + c_V E[(V - R)^2] - c_H H[pi]`` over the real
steps, each minibatch of trials unrolled from the hidden states stored at rollout time
(:func:`metarl.recurrent.recurrent_ppo_update`).

Choices where codebases differ, and ours:

- Outer optimiser: PPO with Adam by default (as garage's ``RL2PPO`` and most reimplementations);
  ``outer="trpo"`` is the paper's TRPO (a KL trust-region step of the policy, ``max_kl`` = 0.01 as rllab's
  default, then Adam on a separate value core; :func:`metarl.recurrent.recurrent_trpo_update`). The paper's
  hyperparameters kept where they carry over: gamma = 0.99, GAE lambda = 0.3 on bandits (sec. 4.1 / appendix),
  one GRU layer.
- GRU size: the paper uses 256 units; ``hidden_size`` is configurable (the benchmarks record what they use).
- Memory core: ``core="gru"`` (default) is the paper's. ``core="attention"`` swaps the GRU for causal
  self-attention over the trial's steps (:mod:`metarl.attention`; SNAIL / TrMRL-style), everything else
  unchanged: ``h_t = Attention(x_0 .. x_t)`` in place of ``GRU(x_t, h_{t-1})``.
- Value function: ``value_core="shared"`` (default) puts the linear value head on the policy's GRU (one
  core, two heads); ``"separate"`` gives the value head a GRU of its own that reads the same inputs, as
  the RL² authors' code does (a separate recurrent baseline network in their rllab sandbox).
  ``task_informed_value=True`` lets the value head (then an MLP) also read the task's parameters in training, an
  asymmetric critic the policy never sees (:class:`metarl.recurrent.RecurrentActorCritic`); off by default (on
  the n=100, k=5 bandits it did not help: ``benchmarks/results/rl2_bandits.json``).
- Trial end: terminal for the value target (the objective stops there); episode ends inside the trial
  are not (the paper's "the hidden state is not reset between episodes"). Episodes are separated for the
  network only by the done flag in the input.
- Bandits: one trial = one env episode of ``n`` pulls (``metarl/Bandit-v0``, ``episodes_per_trial=1``), as
  in the paper, where a bandit trial is ``n`` pulls.
- Evaluation (``adapt``): a trial of ``budget + 1`` episodes on the new task with sampled actions;
  ``stage_returns[k]`` is the return of episode ``k + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metarl.attention import AttentionCore
from metarl.config import option, require, require_at_least, require_choice
from metarl.recurrent import TrialPPOConfig, TrialPPOLearner
from metarl.rollout import TaskEnvs

CORES = ("gru", "attention")


@dataclass(frozen=True)
class RL2Config(TrialPPOConfig):
    hidden_size: int = option(128, "GRU units (RL² paper: 256); the attention core's width d")
    core: str = option("gru", "gru: the paper's GRU; attention: causal self-attention over the trial's steps "
                              "(metarl.attention)")
    attention_layers: int = option(2, "attention core: transformer blocks L")
    attention_heads: int = option(4, "attention core: heads per block (hidden_size must be a multiple)")
    attention_context: int = option(0, "attention core: steps W each step attends back to (0: the training "
                                       "trial's length, episodes_per_trial x the env's horizon)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.hidden_size >= 1, f"hidden_size must be >= 1 GRU unit, got {self.hidden_size}")
        require_choice(self, "core", CORES)
        require_at_least(self, 1, "attention_layers", "attention_heads")
        require_at_least(self, 0, "attention_context")
        require(self.core != "attention" or self.hidden_size % self.attention_heads == 0,
                f"hidden_size ({self.hidden_size}) must be a multiple of attention_heads ({self.attention_heads}) "
                "for the attention core; change one of them")


class GRUCore(nn.Module):
    """``h_t = GRU(x_t, h_{t-1})``; the state and the output are ``h`` (``[B, hidden_size]``).

    ``unroll`` is one ``torch.nn.GRU`` call over the whole sequence; ``step`` is the same module on a
    sequence of length 1, so rollout and update compute the same recurrence.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size)
        self.state_size = self.output_size = hidden_size

    def initial_state(self, batch: int, device: torch.device | str) -> torch.Tensor:
        weight = next(self.gru.parameters())
        return torch.zeros(batch, self.state_size, device=device, dtype=weight.dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x[None], state[None].contiguous())
        return out[0], h[0]

    def unroll(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x, state[None].contiguous())
        return out, h[0]


class RL2Agent(TrialPPOLearner):
    """RL²: a GRU policy (or the attention core's) whose memory carries what it learned about the task through a
    trial."""

    def __init__(self, envs: TaskEnvs, config: RL2Config, seed: int = 0, device: torch.device | str = "cpu") -> None:
        context = config.attention_context or config.episodes_per_trial * envs.horizon

        def make_core(input_size: int) -> nn.Module:
            if config.core == "attention":
                return AttentionCore(input_size, config.hidden_size, config.attention_layers, config.attention_heads,
                                     context)
            return GRUCore(input_size, config.hidden_size)

        super().__init__(envs, config, make_core, seed, device)


__all__ = ["GRUCore", "RL2Agent", "RL2Config"]
